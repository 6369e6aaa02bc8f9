"""Course helpers for training a CNN on Fashion-MNIST with PyTorch.

The notebooks tell the story; this file holds the mechanisms they share. It reads top to bottom
in the order of the course: settings -> data -> model -> training loop -> prediction and plots ->
checkpoints -> command line (`python helpers.py --help`).
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset, random_split
from torchvision import datasets, transforms

REPO_ROOT = Path(__file__).resolve().parent
DATA_ROOT = REPO_ROOT / "data"  # torchvision's layout below it: data/FashionMNIST/raw/
RUNS_ROOT = REPO_ROOT / "runs"  # one TensorBoard run directory per training run
CHECKPOINTS = REPO_ROOT / "checkpoints"  # yours, from training (not in git)
REFERENCE = REPO_ROOT / "reference"      # trained by the course authors, shipped in git

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class CourseError(Exception):
    """A problem the student can fix; the message says how (the CLI prints it as one line)."""


class DatasetError(CourseError):
    """The Fashion-MNIST files are missing, corrupt or cannot be written."""


class CheckpointError(CourseError):
    """A checkpoint file is unreadable or belongs to another network."""


# --------------------------------------------------------------------------------------------
# Settings: the full course recipe, or a smoke run that takes the same code paths in seconds
# --------------------------------------------------------------------------------------------

def smoke_mode() -> bool:
    """True when FMNIST_SMOKE is set (CI runs every notebook this way)."""
    return os.environ.get("FMNIST_SMOKE", "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class Settings:
    """Hyper-parameters of one training run; the defaults are the original notebook's recipe."""
    model: str = "original"
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_factor: float = 0.1          # ReduceLROnPlateau: multiply the lr by this ...
    lr_patience: int = 4            # ... after this many epochs without a better valid loss
    stop_patience: int = 7          # early stopping: epochs without a better valid loss
    seed: int = 0
    train_size: int | None = None   # None: all 50,000 training images
    valid_size: int | None = None   # None: all 10,000 validation images
    test_size: int | None = None    # None: all 10,000 test images
    fast: bool = False              # the fast path: data on the device, channels-last, mixed precision
    optimizer: str = "adam"         # "adam" (L2 weight decay, as the original) or "adamw" (decoupled)
    schedule: str = "plateau"       # "plateau" (ReduceLROnPlateau) or "onecycle" (up, then down, per step)
    augment: bool = False           # random 2-pixel shifts and mirror images (fast path only)
    label_smoothing: float = 0.0    # CrossEntropyLoss(label_smoothing=...): softer targets
    compile: bool = False           # torch.compile the network (with CUDA graphs on a GPU); see compile_model
    final_fit: bool = False         # train on all 60,000 images (train + validation): the last step, once
                                    # validation has chosen the recipe; its "valid" figures are then not held out

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr_patience", "stop_patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be zero or positive, got {self.weight_decay!r}")
        if self.model not in MODELS:
            raise ValueError(f"unknown network {self.model!r}: choose one of {', '.join(MODELS)}")
        for name, allowed in (("optimizer", ("adam", "adamw")), ("schedule", ("plateau", "onecycle"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: choose {' or '.join(allowed)}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in 0..1, got {self.label_smoothing!r}")
        if self.final_fit and self.schedule != "onecycle":
            raise ValueError("final_fit needs a fixed-length schedule (onecycle): the plateau schedule and early "
                             "stopping watch the validation loss, and a final fit has no held-out validation")
        if self.augment and not self.fast:
            raise ValueError("augment=True needs the fast path (fast=True): augmentation runs on the device")


# The three recipes of the course: stages 5-6 teach the original; stage 10 climbs to the others.
RECIPES: dict[str, dict] = {
    "original": {},  # the original notebook: batch 16, Adam 1e-3, ReduceLROnPlateau, early stopping
    "original-fast": dict(fast=True, batch_size=128, epochs=25, lr=3e-3, schedule="onecycle"),
    "improved": dict(model="improved", fast=True, batch_size=256, epochs=24, lr=4e-3, optimizer="adamw",
                     weight_decay=0.05, schedule="onecycle", augment=True, label_smoothing=0.1),
}


def course_settings(smoke: bool | None = None, recipe: str = "original", **overrides) -> Settings:
    """A recipe's settings (see RECIPES); in smoke mode a few thousand images and two epochs."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    if smoke is None:
        smoke = smoke_mode()
    settings = Settings(**RECIPES[recipe])
    if smoke:
        settings = replace(settings, epochs=2, train_size=4000, valid_size=1000, test_size=1000)
    return replace(settings, **overrides)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a generator for the DataLoader's shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks the GPU when there is one; 'cpu', 'cuda', 'cuda:1', 'mps' pick that device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA GPU: use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS is not available here: use cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def machine() -> str:
    """A one-line description of this machine, for the notebooks' closing "produced on" line."""
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()} with torch {torch.__version__}"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() else "CPU"
    return (f"CPU only ({cpu}, {os.cpu_count()} cores, torch using {torch.get_num_threads()} "
            f"thread{'s' if torch.get_num_threads() > 1 else ''}) with torch {torch.__version__}")


# --------------------------------------------------------------------------------------------
# Stage 1 -- Data: the real Fashion-MNIST, from a local copy when there is one
# --------------------------------------------------------------------------------------------

# SHA-256 of the decompressed original files. Debian's .gz files differ from the ones torchvision
# downloads (other gzip headers), so we check what is inside, not the archives.
RAW_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
HOW_TO_GET_DATA = ("connect to the internet (torchvision downloads it), or "
                   "`sudo apt-get install dataset-fashion-mnist`, or set FMNIST_DATA to a folder "
                   "holding the four original files (train-images-idx3-ubyte.gz ...)")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def local_copy_dirs() -> list[Path]:
    """Where to look for the original files before downloading, in order."""
    dirs = [Path(os.environ["FMNIST_DATA"]).expanduser()] if os.environ.get("FMNIST_DATA") else []
    return dirs + [DEBIAN_DATA_DIR]


def find_original_file(folder: Path, name: str) -> Path | None:
    """The file `name` or `name.gz` in `folder`, if present."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def copy_decompressed(src: Path, dest: Path) -> None:
    """Copy src (gz or plain) to dest decompressed, check its SHA-256, then move it into place."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
        if sha256_of(tmp) != RAW_SHA256[dest.name]:
            raise DatasetError(f"{src} is not the original Fashion-MNIST file (SHA-256 mismatch): "
                               f"replace it with a good copy, or " + HOW_TO_GET_DATA)
        os.replace(tmp, dest)
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, PermissionError):
            raise DatasetError(f"cannot write {dest}: choose a writable data folder ({e.strerror})") from None
        raise DatasetError(f"{src} is truncated or corrupt ({e}): replace it with a good copy, or "
                           + HOW_TO_GET_DATA) from None
    finally:
        tmp.unlink(missing_ok=True)


def download_with_torchvision(root: Path) -> None:
    """Let torchvision download Fashion-MNIST into root (how Colab gets it)."""
    chatter = io.StringIO()  # torchvision prints one line per mirror it tries
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            datasets.FashionMNIST(root, train=True, download=True)
            datasets.FashionMNIST(root, train=False, download=True)
    except (RuntimeError, OSError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"  # what failed, and why
        raise DatasetError(f"Fashion-MNIST is not in {root} and could not be downloaded "
                           f"({reason}). Ways out: " + HOW_TO_GET_DATA) from None


def prepare_data(root: Path | str = DATA_ROOT) -> Path:
    """Make sure root/FashionMNIST/raw/ holds the four verified files; return root.

    Order: files already in place -> a local copy (FMNIST_DATA, then Debian's package) ->
    torchvision's download. Every file's SHA-256 is checked before anything trains on it.
    """
    root = Path(root)
    raw = root / "FashionMNIST" / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create the data folder {raw} ({e.strerror}): "
                           f"pass a writable folder as the data root") from None
    missing = [n for n in RAW_SHA256 if not (raw / n).is_file()]
    if missing:
        if os.environ.get("FMNIST_DATA") and not all(
                find_original_file(local_copy_dirs()[0], n) for n in missing):
            raise DatasetError(f"FMNIST_DATA={os.environ['FMNIST_DATA']} does not hold all four "
                               f"Fashion-MNIST files (missing e.g. {missing[0]}.gz)")
        source = next((d for d in local_copy_dirs()
                       if all(find_original_file(d, n) for n in missing)), None)
        if source is not None:
            for name in missing:
                copy_decompressed(find_original_file(source, name), raw / name)
        else:
            download_with_torchvision(root)
    for name, expected in RAW_SHA256.items():
        if sha256_of(raw / name) != expected:
            raise DatasetError(f"{raw / name} is corrupt or truncated (SHA-256 mismatch): "
                               f"delete it and run again to fetch a fresh copy")
    return root


def split_train_valid(train: Dataset, seed: int = 42) -> tuple[Subset, Subset]:
    """The course's 50,000 / 10,000 train / validation split: seeded, so identical for everyone."""
    return random_split(train, [50_000, 10_000], generator=torch.Generator().manual_seed(seed))


def first(dataset: Dataset, size: int | None) -> Dataset:
    """The first `size` samples of a dataset (all of it when size is None)."""
    return dataset if size is None or size >= len(dataset) else Subset(dataset, range(size))


def load_datasets(settings: Settings | None = None, root: Path | str = DATA_ROOT,
                  transform=None) -> tuple[Dataset, Dataset, Dataset]:
    """Train, validation and test sets as torchvision datasets (ToTensor by default)."""
    settings = settings or course_settings()
    transform = transform or transforms.ToTensor()
    root = prepare_data(root)
    full_train = datasets.FashionMNIST(root, train=True, download=False, transform=transform)
    test = datasets.FashionMNIST(root, train=False, download=False, transform=transform)
    train, valid = split_train_valid(full_train)
    if settings.final_fit:  # the recipe is chosen: learn from the validation images too
        train = Subset(full_train, [*train.indices, *valid.indices])
    return (first(train, settings.train_size), first(valid, settings.valid_size),
            first(test, settings.test_size))


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, device: torch.device | None = None) -> DataLoader:
    """A DataLoader that is safe on Colab's 2 vCPUs and on CPU-only machines."""
    # num_workers=0: the images are already in memory, and worker processes on a 2-core machine
    # compete with training itself (and misbehave in some notebook front ends).
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=0, pin_memory=device is not None and device.type == "cuda")


# The fast path (stage 10): the whole uint8 dataset lives on the device and batches are cut,
# scaled and augmented there -- no per-image Python, no copy per step. It iterates like a
# DataLoader, so train_one_epoch, evaluate and fit take it unchanged.

def dataset_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images [N, 28, 28] and labels [N] behind a FashionMNIST dataset or a Subset of one."""
    indices = None
    while isinstance(dataset, Subset):  # a Subset of a Subset: compose the index lists
        outer = torch.as_tensor(list(dataset.indices))
        indices = outer if indices is None else outer[indices]
        dataset = dataset.dataset
    if not isinstance(dataset, datasets.FashionMNIST):
        raise TypeError(f"the fast path needs a FashionMNIST dataset (or a Subset of one), got {type(dataset).__name__}")
    if indices is None:
        return dataset.data, dataset.targets
    return dataset.data[indices], dataset.targets[indices]


def shift_and_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Per image: a 28x28 crop of the zero-padded image at `shifts` (0..2*pad), mirrored where `flips`."""
    batch, _, height, width = images.shape
    padded = nn.functional.pad(images, (pad, pad, pad, pad))
    rows = torch.arange(height, device=images.device) + shifts[:, :1]        # [B, 28]
    cols = torch.arange(width, device=images.device) + shifts[:, 1:]         # [B, 28]
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a mirror image reads its columns backwards
    return padded[torch.arange(batch, device=images.device)[:, None, None], 0,
                  rows[:, :, None], cols[:, None, :]].unsqueeze(1)


class DeviceLoader:
    """Batches [B, 1, 28, 28] in 0-1 cut from uint8 tensors kept on `device`, like a DataLoader.

    augment=True shifts every image by up to 2 pixels and mirrors half of them, drawn per image.
    channels_last stores batches in the memory layout that convolutions run fastest in.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 augment: bool = False, channels_last: bool = False) -> None:
        self.dataset, self.batch_size, self.shuffle, self.generator = dataset, batch_size, shuffle, generator
        self.device, self.augment, self.channels_last = torch.device(device), augment, channels_last
        images, labels = dataset_tensors(dataset)
        self.images, self.labels = images.to(self.device), labels.to(self.device)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        # one epoch's random numbers, drawn on the CPU from the seeded generator and moved once
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device, non_blocking=True)
        if self.augment:
            shifts = torch.randint(0, 5, (n, 2), generator=self.generator).to(self.device, non_blocking=True)
            flips = (torch.rand(n, generator=self.generator) < 0.5).to(self.device, non_blocking=True)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.images[index].unsqueeze(1).float().div_(255)  # what ToTensor does, per batch
            if self.augment:
                images = shift_and_flip(images, shifts[start:start + len(index)], flips[start:start + len(index)])
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, self.labels[index]


def mixed_precision(device: torch.device) -> torch.dtype | None:
    """The autocast type for this device: bf16 on Ampere and newer, fp16 on older GPUs, none on CPU.

    Decided by compute capability: a T4 (7.5) reports is_bf16_supported() as True, but only
    emulates bf16, slowly; its tensor cores do fp16.
    """
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


# --------------------------------------------------------------------------------------------
# Stage 4 -- Model
# --------------------------------------------------------------------------------------------

class FMnistCNN(nn.Module):
    """The original notebook's CNN (242,250 parameters, same parameter names), dropout fixed.

    The original called F.dropout(x, 0.5) in forward(), which stays on after model.eval(); an
    nn.Dropout module follows train()/eval(). It has no parameters, so the original's
    state_dict still loads with strict=True.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_block1 = nn.Sequential(                  # 1x28x28 -> 32x14x14
            nn.Conv2d(1, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32),
            nn.ReLU(), nn.MaxPool2d(2))
        self.conv_block2 = nn.Sequential(                  # -> 64x7x7
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.BatchNorm2d(64), nn.Dropout(0.2),
            nn.ReLU(), nn.MaxPool2d(2))
        self.conv_block3 = nn.Sequential(                  # -> 128x3x3
            nn.Conv2d(64, 128, kernel_size=3, padding=1), nn.BatchNorm2d(128), nn.Dropout(0.4),
            nn.ReLU(), nn.MaxPool2d(2))
        self.linear1 = nn.Linear(128 * 3 * 3, 128)
        self.batch_norm = nn.BatchNorm1d(128)
        self.dropout = nn.Dropout(0.5)
        self.linear2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_block3(self.conv_block2(self.conv_block1(x)))
        x = self.batch_norm(self.linear1(x.flatten(1)))
        return self.linear2(torch.relu(self.dropout(x)))  # logits: CrossEntropyLoss adds the softmax


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (no bias: BatchNorm adds its own), BatchNorm, ReLU; keeps height and width."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two convolutions whose output is added to their input: x + f(x) (a ResNet's building block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)  # the block only has to learn a correction to x: deep nets train easily


class ImprovedCNN(nn.Module):
    """Stage 10's network: a small ResNet (the ResNet-9 shape), 261,298 parameters.

    Differences from FMnistCNN: two convolutions at full 28x28 resolution, residual blocks, and a
    global max-pool instead of the big linear layer -- the parameters go into convolutions.
    """

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, width), conv_bn_relu(width, 2 * width), nn.MaxPool2d(2),  # -> 48x14x14
            ResidualBlock(2 * width),
            conv_bn_relu(2 * width, 4 * width), nn.MaxPool2d(2),                     # -> 96x7x7
            ResidualBlock(4 * width),
            nn.AdaptiveMaxPool2d(1), nn.Flatten())                                   # -> 96
        self.classifier = nn.Linear(4 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODELS: dict[str, type[nn.Module]] = {"original": FMnistCNN, "improved": ImprovedCNN}


def build_model(name: str = "original") -> nn.Module:
    """A fresh network by its course name (see MODELS)."""
    if name not in MODELS:
        raise ValueError(f"unknown network {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]()


def model_name(model: nn.Module) -> str:
    """The course name of a network instance ('original', ...)."""
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not one of the course networks ({', '.join(MODELS)})")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------
# Stages 5 and 6 -- Loss, optimizer, scheduler, and the training loop
# --------------------------------------------------------------------------------------------

def make_optimizer(model: nn.Module, settings: Settings) -> torch.optim.Optimizer:
    """Adam (or AdamW) with the settings' learning rate and weight decay."""
    adam = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: Settings, steps_per_epoch: int | None = None):
    """ReduceLROnPlateau on the validation loss (no verbose=: torch 2.14 removed it), or one-cycle.

    One-cycle warms the learning rate up to settings.lr and anneals it to almost zero over the
    whole run, one step per batch: it needs the number of batches per epoch.
    """
    if settings.schedule == "onecycle":
        if not steps_per_epoch:
            raise ValueError("the one-cycle schedule needs steps_per_epoch (len(train_loader))")
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, epochs=settings.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=settings.lr_factor, patience=settings.lr_patience)


def steps_per_batch(scheduler) -> bool:
    """True for schedules that move after every batch (one-cycle), False for per-epoch ones."""
    return isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)


def make_scaler(device: torch.device, precision: torch.dtype | None) -> torch.amp.GradScaler:
    """The gradient scaler fp16 needs (so small gradients do not round to zero); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == torch.float16)


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    precision: torch.dtype | None = None, scheduler=None,
                    scaler: torch.amp.GradScaler | None = None) -> float:
    """One pass over the training data; returns the mean training loss per image.

    precision=torch.float16 or torch.bfloat16 runs the forward pass in mixed precision (GPU);
    fp16 gradients are scaled so that small ones do not round to zero.
    scheduler: a per-batch schedule (one-cycle), stepped after every update.
    scaler: the run's gradient scaler (fit makes one per run, so the scale it settles on carries
    over between epochs); None makes a fresh one for this epoch.
    """
    model.train()
    if scaler is None:
        scaler = make_scaler(device, precision)
    total_loss = torch.zeros((), device=device)  # summed on the device: no GPU sync per step
    seen = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            logits = model(images)              # 1. forward
            loss = loss_fn(logits, labels)      # 2. loss (mean over the batch)
        optimizer.zero_grad(set_to_none=True)   # 3. forget the previous step's gradients
        scaler.scale(loss).backward()           # 4. backward: compute the gradients
        scaler.step(optimizer)                  # 5. step: update the weights
        scaler.update()
        if scheduler is not None:
            step_after_update(scheduler, scaler)
        total_loss += loss.detach().float() * len(labels)
        seen += len(labels)
    return total_loss.item() / seen


# PyTorch warns when a schedule steps before its optimizer ever has: in fp16 that is expected
SCHEDULE_FIRST_WARNING = re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")


def step_after_update(scheduler, scaler: torch.amp.GradScaler) -> None:
    """Step a per-batch schedule once per batch, whether or not the weights moved.

    In fp16 the scaler skips the update of a batch whose scaled gradients overflowed (the first
    few, while it finds its scale); the schedule still moves on, and PyTorch's warning that it
    stepped first would only confuse, so it is silenced there and only there.
    """
    if not scaler.is_enabled():  # no fp16, no skipped updates: nothing to silence
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", SCHEDULE_FIRST_WARNING)
        scheduler.step()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, loss_fn: nn.Module,
             device: torch.device, flip_tta: bool = False) -> tuple[float, float]:
    """Mean loss per image and accuracy (0-1) of the model in eval mode.

    flip_tta=True (test-time augmentation) averages the logits of each image and its mirror image.
    """
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        if flip_tta:
            logits = (logits + model(images.flip(3))) / 2
        # reduction="sum" would need a second loss object; weighting the batch mean is the same
        total_loss += loss_fn(logits, labels) * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
    n = len(loader.dataset)
    return total_loss.item() / n, correct.item() / n


class EarlyStopping:
    """Stop when the validation loss has not improved for `patience` epochs in a row."""

    def __init__(self, patience: int = 7) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.bad_epochs = 0

    def step(self, valid_loss: float) -> bool:
        """Record one epoch's validation loss; True means stop now."""
        if valid_loss < self.best_loss:
            self.best_loss, self.bad_epochs = valid_loss, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


@dataclass
class History:
    """Per-epoch figures of a training run (lists are indexed by epoch - 1)."""
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    interrupted: bool = False

    @property
    def epochs(self) -> int:
        return len(self.train_loss)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the optimizer's first parameter group."""
    return optimizer.param_groups[0]["lr"]


def step_scheduler(scheduler, valid_loss: float) -> None:
    """Advance a per-epoch scheduler: ReduceLROnPlateau watches the validation loss."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(valid_loss)
    else:
        scheduler.step()


def rng_state(loader: DataLoader) -> dict:
    """Every random-number generator a training epoch draws from, so a resumed run repeats it."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
        "loader": loader.generator.get_state() if loader.generator is not None else None,
    }


def set_rng_state(state: dict, loader: DataLoader) -> None:
    """Put back the generators saved by rng_state()."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    if state["loader"] is not None and loader.generator is not None:
        loader.generator.set_state(state["loader"].cpu())


def training_state(optimizer, scheduler, early_stopping, history: History, train_loader,
                   writer=None, best_path: Path | str | None = None, scaler=None) -> dict:
    """What a last checkpoint holds besides the weights, to resume exactly where it stopped."""
    return {
        "run_dir": str(writer.log_dir) if hasattr(writer, "log_dir") else None,  # TensorBoard
        "best_path": str(best_path) if best_path is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,  # fp16
        "early_stopping": vars(early_stopping).copy() if early_stopping is not None else None,
        "history": {k: v for k, v in vars(history).items()},
        "rng": rng_state(train_loader),
    }


def restore_training(path: Path | str, model, optimizer, scheduler, early_stopping,
                     train_loader, device, scaler=None) -> History:
    """Load a last checkpoint's weights and training state into fresh objects; returns its History."""
    payload = read_checkpoint(path, device)
    state = payload.get("training_state")
    if state is None:
        raise CheckpointError(f"{path} holds weights only, no training state to resume from: "
                              f"resume from the run's last checkpoint instead")
    if payload.get("model") != model_name(model):
        raise CheckpointError(f"{path} is a run of the {payload.get('model')!r} network, "
                              f"not {model_name(model)!r}")
    load_weights(model, payload, path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):  # older checkpoints have none: a fresh scale
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its optimizer or scheduler state does not fit this run ({e})") from None
    if early_stopping is not None and state["early_stopping"] is not None:
        vars(early_stopping).update(state["early_stopping"])
    set_rng_state(state["rng"], train_loader)
    return History(**state["history"])


def fit(model: nn.Module, train_loader: DataLoader, valid_loader: DataLoader, *,
        loss_fn: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, epochs: int,
        scheduler=None, writer=None, early_stopping: EarlyStopping | None = None,
        best_path: Path | str | None = None, last_path: Path | str | None = None,
        resume: Path | str | None = None, settings: Settings | None = None,
        precision: torch.dtype | None = None,
        log: Callable[[str], None] = print) -> History:
    """Train for up to `epochs` epochs, validating after each one.

    Logs to the TensorBoard `writer`, steps the `scheduler` on the validation loss, saves the
    best checkpoint (validation accuracy) to best_path and the latest, with everything needed to
    resume, to last_path; stops early when `early_stopping` says so. `resume=last_path` carries
    on an interrupted run exactly. Ctrl-C (or Colab's stop button) ends the run cleanly.
    precision: see train_one_epoch (mixed precision on a GPU).
    Returns the History for plotting.
    """
    history = History()
    scaler = make_scaler(device, precision)  # one per run: fp16's scale carries over between epochs
    if resume is not None:
        history = restore_training(resume, model, optimizer, scheduler, early_stopping, train_loader, device, scaler)
        log(f"resumed from {resume} after epoch {history.epochs}")
        if history.stopped_early:
            log("          that run had already stopped early: nothing left to do")
            return history
    best_accuracy = max(history.valid_accuracy, default=-1.0)
    for epoch in range(history.epochs + 1, epochs + 1):
        try:
            start = time.perf_counter()
            lr = current_lr(optimizer)
            train_loss = train_one_epoch(model, train_loader, loss_fn, optimizer, device, precision,
                                         scheduler if steps_per_batch(scheduler) else None, scaler)
            valid_loss, valid_accuracy = evaluate(model, valid_loader, loss_fn, device)
        except KeyboardInterrupt:
            history.interrupted = True
            log(f"interrupted during epoch {epoch}: the checkpoints of epoch {epoch - 1} are intact"
                + (f"; continue with fit(..., resume={str(last_path)!r})" if last_path and epoch > 1 else ""))
            break
        seconds = time.perf_counter() - start
        for key, value in (("train_loss", train_loss), ("valid_loss", valid_loss),
                           ("valid_accuracy", valid_accuracy), ("lr", lr), ("seconds", seconds)):
            getattr(history, key).append(value)
        log(f"epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  valid loss {valid_loss:.4f}  "
            f"valid acc {valid_accuracy:6.2%}  lr {lr:.0e}  {seconds:5.1f} s")
        if writer is not None:
            if epoch == 1:
                writer.add_custom_scalars(LOSS_LAYOUT)
            writer.add_scalar("loss/train", train_loss, epoch)   # step = epoch, so a resumed
            writer.add_scalar("loss/valid", valid_loss, epoch)   # run continues the same curves
            writer.add_scalar("accuracy/valid", valid_accuracy, epoch)
            writer.add_scalar("learning_rate", lr, epoch)
            writer.flush()  # so a dashboard open during training shows each epoch as it ends

        if scheduler is not None and not steps_per_batch(scheduler):
            step_scheduler(scheduler, valid_loss)
            if current_lr(optimizer) != lr:  # what verbose=True used to print
                log(f"          learning rate reduced: {lr:.0e} -> {current_lr(optimizer):.0e}")
        stop = early_stopping is not None and early_stopping.step(valid_loss)
        history.stopped_early = stop

        metrics = {"train_loss": train_loss, "valid_loss": valid_loss, "valid_accuracy": valid_accuracy}
        if valid_accuracy > best_accuracy:
            best_accuracy, history.best_epoch = valid_accuracy, epoch
            if best_path is not None:
                save_checkpoint(best_path, model, epoch=epoch, metrics=metrics, settings=settings)
        if last_path is not None:  # saved after the scheduler and early stopping moved on
            save_checkpoint(last_path, model, epoch=epoch, metrics=metrics, settings=settings,
                            extra={"training_state": training_state(
                                optimizer, scheduler, early_stopping, history, train_loader,
                                writer, best_path, scaler)})
        if stop:
            log(f"          early stop: no better validation loss for {early_stopping.patience} "
                f"epochs (best {early_stopping.best_loss:.4f}); best accuracy at epoch {history.best_epoch}")
            break
    if writer is not None and history.epochs and not history.interrupted:
        log_run_summary(writer, model, valid_loader, device, history, settings)
    return history


def make_eval_loader(settings: Settings, dataset: Dataset, device: torch.device):
    """Batches of 1,000 for validation or testing, on the run's path (DataLoader or fast path)."""
    if settings.fast:
        return DeviceLoader(dataset, 1000, device=device, channels_last=True)
    return make_loader(dataset, 1000, device=device)


def make_train_loader(settings: Settings, train_set: Dataset, generator: torch.Generator,
                      device: torch.device):
    """Shuffled training batches of the run's size: a DataLoader, or the fast path (augmented if asked)."""
    if settings.fast:
        return DeviceLoader(train_set, settings.batch_size, shuffle=True, generator=generator,
                            device=device, augment=settings.augment, channels_last=True)
    return make_loader(train_set, settings.batch_size, shuffle=True, generator=generator, device=device)


def make_run_loaders(settings: Settings, train_set: Dataset, valid_set: Dataset, test_set: Dataset,
                     generator: torch.Generator, device: torch.device) -> tuple:
    """Train (shuffled), validation and test loaders of a run: DataLoaders, or the fast path."""
    return (make_train_loader(settings, train_set, generator, device),
            make_eval_loader(settings, valid_set, device), make_eval_loader(settings, test_set, device))


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Compile the network in place: fused kernels, and on a GPU CUDA graphs (one launch per step).

    nn.Module.compile keeps the module and its state_dict keys as they are, so checkpoints load
    into an uncompiled network. dynamic=False: one graph per batch shape (a full batch, the last
    one, the evaluation batch) instead of slower shape-generic code. The first batches pay for
    the compilation (tens of seconds); on a CPU the compiled network trains slower than eager
    PyTorch's own kernels (measured: see the README), so the course only uses it on a GPU.
    """
    model.compile(mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
    return model


def make_training(settings: Settings, device: torch.device, steps_per_epoch: int) -> tuple:
    """A fresh network (channels-last on the fast path), its optimizer, scheduler and loss, from a recipe."""
    model = build_model(settings.model).to(device)
    if settings.fast:
        model = model.to(memory_format=torch.channels_last)
    if settings.compile:
        compile_model(model, device)
    optimizer = make_optimizer(model, settings)
    return (model, optimizer, make_scheduler(optimizer, settings, steps_per_epoch),
            nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing))


def train_run(settings: Settings, train_set: Dataset, valid_set: Dataset, device: torch.device, *,
              run_dir: Path | str, best_path: Path | str | None = None, last_path: Path | str | None = None,
              resume: Path | str | None = None, log: Callable[[str], None] = print) -> tuple[nn.Module, History, float]:
    """One training run of a recipe, seeded, logged to TensorBoard; returns model, history and minutes.

    Everything stages 5 and 6 assembled by hand, from the settings: loaders, network, optimizer,
    scheduler, loss, early stopping (not with one-cycle: its length is fixed), precision.
    """
    from torch.utils.tensorboard import SummaryWriter
    generator = seed_everything(settings.seed)
    train_loader = make_train_loader(settings, train_set, generator, device)
    valid_loader = make_eval_loader(settings, valid_set, device)
    model, optimizer, scheduler, loss_fn = make_training(settings, device, len(train_loader))
    log(f"training {settings.model} ({count_parameters(model):,} parameters) on {device}: "
        f"{len(train_set):,} train / {len(valid_set):,} valid images, batch {settings.batch_size}, "
        f"up to {settings.epochs} epochs; TensorBoard run {os.path.relpath(run_dir)}")
    if settings.final_fit:
        log("final fit: the validation images are in the training set, so the validation figures "
            "below are not an estimate of test accuracy")
    start = time.perf_counter()
    with SummaryWriter(run_dir) as writer:
        history = fit(model, train_loader, valid_loader, optimizer=optimizer, device=device, epochs=settings.epochs,
                      loss_fn=loss_fn, scheduler=scheduler, writer=writer,
                      early_stopping=None if settings.schedule == "onecycle" else EarlyStopping(settings.stop_patience),
                      best_path=best_path, last_path=last_path, resume=resume, settings=settings,
                      precision=mixed_precision(device) if settings.fast else None, log=log)
    return model, history, (time.perf_counter() - start) / 60


# TensorBoard: add_scalars("loss", {...}) would write each curve as a separate run (runs/x/loss_train,
# runs/x/loss_valid), cluttering the run list. We log plain tags and ask for one combined chart
# in the Custom Scalars tab instead.
LOSS_LAYOUT = {"Fashion-MNIST": {"loss: train vs validation": ["Multiline", ["loss/train", "loss/valid"]]}}


def log_run_summary(writer, model: nn.Module, valid_loader: DataLoader, device: torch.device,
                    history: History, settings: Settings | None = None) -> None:
    """End of a run: the validation confusion matrix as an image, and hyper-parameters with results."""
    from torch.utils.tensorboard.summary import hparams
    labels, predictions = predict_all(model, valid_loader, device)
    matrix = confusion_matrix(labels, predictions)
    writer.add_figure("valid/confusion_matrix", plot_confusion_matrix(matrix), history.epochs)
    params = {k: v for k, v in vars(settings or Settings()).items() if v is not None}
    results = {"hparam/best_valid_accuracy": max(history.valid_accuracy),
               "hparam/final_valid_loss": history.valid_loss[-1], "hparam/epochs": history.epochs}
    for summary in hparams(params, results):  # into this run itself (add_hparams makes a new one)
        writer.file_writer.add_summary(summary)
    for tag, value in results.items():
        writer.add_scalar(tag, value, history.epochs)
    writer.flush()


def read_scalars(run_dir: Path | str) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar series of a TensorBoard run, read with TensorBoard's own reader: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in events.Tags()["scalars"]}


def plot_runs(*run_dirs: Path | str, tags=("loss/train", "loss/valid", "accuracy/valid")):
    """The TensorBoard curves of one or more runs, drawn with matplotlib (no server needed)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(tags), figsize=(5 * len(tags), 3.6), squeeze=False)
    for run_dir in run_dirs:
        scalars = read_scalars(run_dir)
        for ax, tag in zip(axes[0], tags):
            if tag in scalars:
                ax.plot(*scalars[tag], marker=".", label=Path(run_dir).name)
    for ax, tag in zip(axes[0], tags):
        ax.set(title=tag, xlabel="epoch")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Stages 7 and 8 -- Prediction and plots
# --------------------------------------------------------------------------------------------

def as_image_batch(images: torch.Tensor) -> torch.Tensor:
    """Check and shape images as a float batch [N, 1, 28, 28] with values in 0-1."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    given = tuple(images.shape)  # for the error message, before any reshaping
    if images.dtype == torch.uint8:
        images = images.float() / 255
    elif not images.is_floating_point():
        raise ValueError(f"images must be float (0-1) or uint8 (0-255), got dtype {images.dtype}")
    if images.dim() == 2:
        images = images.unsqueeze(0)
    if images.dim() == 3:
        images = images.unsqueeze(0) if images.shape[0] == 1 else images.unsqueeze(1)
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected a 28x28 grayscale image or a batch [N, 1, 28, 28], "
                         f"got shape {given}")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"float images must hold values in 0-1 (like ToTensor gives), "
                         f"got {lo:.3g}..{hi:.3g}: divide by 255?")
    return images


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor,
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class indices [N] and class probabilities [N, 10] for one image or a batch."""
    model.eval()
    batch = as_image_batch(images).to(device)
    probabilities = torch.softmax(model(batch), dim=1).cpu()
    return probabilities.argmax(dim=1), probabilities


def load_photo(path: Path | str) -> torch.Tensor:
    """A photo (PNG/JPEG, any size, colour or alpha) as a 1x28x28 image in Fashion-MNIST's style.

    Fashion-MNIST shows a light garment, centred, filling a black square. A photo is usually a
    dark garment on a light background: we invert it when its border is light, crop to the
    garment, pad it to a square and shrink it to 28x28.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    if not Path(path).is_file():
        raise ValueError(f"no photo at {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # phones store rotation as metadata
            img = img.convert("RGBA")
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image that can be read (PNG or JPEG expected)") from None
    except (OSError, ValueError) as e:  # a truncated or damaged image file
        raise ValueError(f"{path} is a damaged image ({e}): save or download it again") from None
    background = Image.new("RGBA", img.size, "white")  # transparent pixels become background
    gray = np.asarray(Image.alpha_composite(background, img).convert("L"), dtype=np.float32) / 255
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 0.5:
        gray, border = 1 - gray, 1 - border
    # the brightest background (90th percentile of the border) becomes black: uneven light goes too
    floor = np.percentile(border, 90)
    gray = np.clip((gray - floor) / max(1 - floor, 1e-6), 0, 1)
    rows, cols = np.nonzero(gray > 0.1)
    if len(rows) == 0:
        raise ValueError(f"{path}: no garment found (the picture is empty or has no contrast)")
    garment = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    garment = garment / garment.max()  # stretch: the brightest part of a garment is white, as in the dataset
    side = max(garment.shape)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - garment.shape[0]) // 2, (side - garment.shape[1]) // 2
    square[top:top + garment.shape[0], left:left + garment.shape[1]] = garment
    small = Image.fromarray(np.uint8(square * 255)).resize((28, 28), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255).unsqueeze(0)


@torch.no_grad()
def predict_all(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """True labels and predicted classes for every image of a loader (on the CPU)."""
    model.eval()
    labels, predictions = [], []
    for images, batch_labels in loader:
        predictions.append(model(images.to(device)).argmax(dim=1).cpu())
        labels.append(batch_labels.cpu())  # the fast path's labels live on the device
    return torch.cat(labels), torch.cat(predictions)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Counts [true class, predicted class]."""
    return torch.bincount(labels * num_classes + predictions,
                          minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def most_confused(matrix: torch.Tensor, k: int = 5) -> list[tuple[str, str, int]]:
    """The k most frequent mistakes as (true class, predicted class, count)."""
    mistakes = matrix.clone().fill_diagonal_(0).flatten()
    counts, indices = mistakes.topk(k)
    n = matrix.shape[0]
    return [(CLASSES[i // n], CLASSES[i % n], int(c)) for c, i in zip(counts, indices.tolist()) if c > 0]


def plot_confusion_matrix(matrix: torch.Tensor, title: str = "Confusion matrix"):
    """The confusion matrix with counts in the cells; returns the figure."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(10), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(10), CLASSES)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for (i, j), count in np.ndenumerate(matrix.numpy()):
        ax.text(j, i, count, ha="center", va="center", fontsize=8,
                color="white" if count > matrix.max() / 2 else "black")
    fig.tight_layout()
    return fig


def plot_history(history: History, title: str = ""):
    """Loss and accuracy curves of a training run, side by side; returns the figure."""
    import matplotlib.pyplot as plt
    epochs = range(1, history.epochs + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_loss.plot(epochs, history.train_loss, label="train")
    ax_loss.plot(epochs, history.valid_loss, label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss per image", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, history.valid_accuracy, color="C1")
    ax_acc.axvline(history.best_epoch, color="grey", linestyle=":", label=f"best (epoch {history.best_epoch})")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy")
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Stage 9 -- Checkpoints: weights plus what they are, written atomically
# --------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "fmnist-course-checkpoint/1"


def save_checkpoint(path: Path | str, model: nn.Module, *, epoch: int | None = None,
                    metrics: dict | None = None, settings: Settings | None = None,
                    extra: dict | None = None) -> Path:
    """Save weights with metadata; a crash mid-write never leaves a half-written file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": model_name(model),
        "architecture": type(model).__name__,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": epoch,
        "metrics": dict(metrics or {}),
        "settings": settings.__dict__.copy() if settings else None,
        "classes": list(CLASSES),
        "torch_version": str(torch.__version__),
        "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        **(extra or {}),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)    # atomic: readers see the old file or the new one, never half
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> dict:
    """The checkpoint's contents as a dict; a bare state_dict (the original notebook's) is wrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types here: zip, pickle, EOF, runtime errors
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {why_unreadable(path, e)}") from None
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return payload
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        # torch.save(model.state_dict(), ...) as in the original notebook: assume its network
        return {"format": "bare state_dict", "model": "original", "state_dict": payload,
                "epoch": None, "metrics": {}}
    raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a course checkpoint or a state_dict")


def why_unreadable(path: Path, error: Exception) -> str:
    """What is wrong with a file torch.load refused, in words a student can act on."""
    import pickle
    import zipfile
    head = path.read_bytes()[:4]
    if not head:
        return "the file is empty"
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return "the file is cut short (an interrupted download or copy?): copy it again"
    if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip archive (old torch: a pickle)
        return "torch.save writes a zip archive and this file is not one (a text file? an image?)"
    if isinstance(error, pickle.UnpicklingError):
        return ("it holds Python objects that safe (weights-only) loading refuses: not a course "
                "checkpoint or a state_dict; never load such files from sources you do not trust")
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu",
                    expect: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the saved network in eval mode; returns (model, checkpoint metadata)."""
    payload = read_checkpoint(path, device)
    name = payload.get("model")
    if expect is not None and name != expect:
        raise CheckpointError(f"{path} holds the {name!r} network, not {expect!r}")
    if name not in MODELS:
        raise CheckpointError(f"{path} holds an unknown network {name!r} (known: {', '.join(MODELS)})")
    model = load_weights(build_model(name), payload, path)
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "training_state")}
    return model, meta


def variant_suffix(settings: Settings) -> str:
    """'-final' for a final fit, '-smoke' for a smoke run: kept apart from a real run's files."""
    return ("-final" if settings.final_fit else "") + ("-smoke" if settings.train_size else "")


def checkpoint_paths(settings: Settings, folder: Path | str = CHECKPOINTS,
                     name: str | None = None) -> tuple[Path, Path]:
    """Where a run keeps its best and last checkpoints: checkpoints/original.pt, original-last.pt.

    The name is the recipe's (original, original-fast, improved) unless given. Smoke runs get
    their own names, so a CI run never overwrites a real run's checkpoints.
    """
    name = name or settings.model + ("-fast" if settings.fast and settings.model == "original" else "")
    stem = name + variant_suffix(settings)
    return Path(folder) / f"{stem}.pt", Path(folder) / f"{stem}-last.pt"


def course_checkpoint(name: str = "original") -> Path:
    """Your best checkpoint from stage 6 when there is one, otherwise the course's reference."""
    yours = CHECKPOINTS / f"{name}.pt"
    return yours if yours.is_file() else REFERENCE / f"{name}.pt"


def load_weights(model: nn.Module, payload: dict, path: Path | str) -> nn.Module:
    """Copy a checkpoint's weights into `model` (strict), or say clearly why they do not fit."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in payload["state_dict"].items()}
    problems = []
    for label, keys in (("missing", [k for k in expected if k not in found]),
                        ("unexpected", [k for k in found if k not in expected])):
        if keys:
            problems.append(f"{len(keys)} {label} key{'s' * (len(keys) > 1)} ({', '.join(keys[:3])}"
                            f"{', ...' if len(keys) > 3 else ''})")
    problems += [f"{k} is {list(found[k])} in the file but {list(expected[k])} in the network"
                 for k in expected if k in found and found[k] != expected[k]][:3]
    if problems:
        raise CheckpointError(f"{path} does not fit the {payload.get('model')!r} network "
                              f"({type(model).__name__}): {'; '.join(problems)}")
    model.load_state_dict(payload["state_dict"], strict=True)
    return model


# --------------------------------------------------------------------------------------------
# Command line: python helpers.py train | evaluate | bench
# --------------------------------------------------------------------------------------------

class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line instead of the usage block."""

    def error(self, message: str) -> None:
        command = " ".join(self.prog.split()[1:])  # "helpers.py train" -> "train"; the top level: ""
        self.exit(2, f"error: {message} (see: python helpers.py {command + ' ' if command else ''}--help)\n")


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_name(settings: Settings) -> str:
    """A readable TensorBoard run name: network, settings and start time."""
    return (f"{settings.model}-b{settings.batch_size}-lr{settings.lr:g}{'-fast' if settings.fast else ''}"
            f"{variant_suffix(settings)}-{time.strftime('%Y%m%d-%H%M%S')}")


def train_command(args: argparse.Namespace) -> None:
    """Train one network end to end, save best and last checkpoints, print test accuracy."""
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                   ("compile", args.compile), ("final_fit", args.final_fit)) if v}
    resumed = None
    if args.resume:  # the run's own settings; only --epochs (to train longer) and --compile may change
        saved = read_checkpoint(args.resume)
        resumed = saved.get("training_state")
        if resumed is None or not saved.get("settings"):
            raise CheckpointError(f"{args.resume} is not the last checkpoint of a run: nothing to resume")
        settings = replace(Settings(**saved["settings"]),
                           **{k: v for k, v in overrides.items() if k in ("epochs", "compile")})
    else:
        recipe = "improved" if args.model == "improved" else "original-fast" if args.fast else "original"
        settings = course_settings(smoke=args.smoke or None, recipe=recipe, **overrides)
    device = pick_device(args.device)
    train_set, valid_set, test_set = load_datasets(settings, root=args.data)
    best_path, last_path = checkpoint_paths(settings)
    if args.out:
        best_path = Path(args.out)
        last_path = best_path.with_name(f"{best_path.stem}-last{best_path.suffix}")
    run_dir = Path(args.runs) / run_name(settings)
    if resumed:  # carry on in the same files and the same TensorBoard run
        last_path = Path(args.resume)
        best_path = Path(resumed["best_path"]) if resumed["best_path"] else best_path
        run_dir = Path(resumed["run_dir"]) if resumed["run_dir"] else run_dir
    if settings.final_fit:  # no held-out validation to choose a best epoch by: keep the last one only
        best_path = None
    model, history, minutes = train_run(settings, train_set, valid_set, device, run_dir=run_dir,
                                        best_path=best_path, last_path=last_path, resume=args.resume)
    if history.interrupted:
        raise KeyboardInterrupt
    test_loader = make_eval_loader(settings, test_set, device)
    loss_fn = nn.CrossEntropyLoss()  # test loss without label smoothing, comparable across recipes
    last_loss, last_acc = evaluate(model, test_loader, loss_fn, device)
    on_all = f" on all {len(train_set):,} training images" if settings.final_fit else ""
    print(f"trained {history.epochs} epochs{on_all} in {minutes:.1f} min"
          f"{' (early stop)' if history.stopped_early else ''}")
    last = f"{last_acc:.2%} (loss {last_loss:.4f}) -> {last_path}"
    if best_path is None:  # a final fit: no held-out validation, so no best epoch; the result is the last one
        print(f"test accuracy on {len(test_set):,} images: {last}")
        return
    best_model, _ = load_checkpoint(best_path, device)
    best_loss, best_acc = evaluate(best_model, test_loader, loss_fn, device)
    print(f"test accuracy on {len(test_set):,} images: last {last}; "
          f"best {best_acc:.2%} (loss {best_loss:.4f}, epoch {history.best_epoch}) -> {best_path}")


def evaluate_command(args: argparse.Namespace) -> None:
    """Evaluate one or more checkpoints on the full 10,000-image test set (one line each)."""
    device = pick_device(args.device)
    models = [(path, *load_checkpoint(path, device)) for path in args.checkpoint]  # all readable?
    _, _, test_set = load_datasets(course_settings(smoke=False), root=args.data)
    # the fast path: the same images as a DataLoader's, in the layout convolutions run fastest in
    test_loader = DeviceLoader(test_set, 1000, device=device, channels_last=True)
    for path, model, meta in models:
        model = model.to(memory_format=torch.channels_last)
        start = time.perf_counter()
        test_loss, test_accuracy = evaluate(model, test_loader, nn.CrossEntropyLoss(), device)
        result = {"checkpoint": str(path), "model": meta["model"], "params": count_parameters(model),
                  "test_accuracy": test_accuracy, "test_loss": test_loss, "test_images": len(test_set),
                  "epoch": meta.get("epoch"), "device": str(device),
                  "seconds": round(time.perf_counter() - start, 2)}
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{path}: {result['model']} ({result['params']:,} parameters, epoch {result['epoch']}): "
                  f"test accuracy {test_accuracy:.2%}, test loss {test_loss:.4f} on {len(test_set):,} images")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python helpers.py`; returns the exit status."""
    parser = OneLineParser(prog="helpers.py", description="Fashion-MNIST course: train and evaluate.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    train = commands.add_parser("train", help="train a network end to end and report test accuracy")
    train.add_argument("--model", default="original", choices=sorted(MODELS))
    train.add_argument("--epochs", type=positive_int, help="maximum epochs (default: the recipe's: 50 original, 25 --fast, 24 improved; smoke: 2)")
    train.add_argument("--batch-size", type=positive_int, help="training batch size (default: 16 original, 128 --fast, 256 improved)")
    train.add_argument("--fast", action="store_true", help="the original network on the fast path: data on the "
                       "device, channels-last, mixed precision on a GPU, batch 128, one-cycle, 25 epochs "
                       "(--model improved always runs on it)")
    train.add_argument("--compile", action="store_true", help="torch.compile the network, with CUDA graphs on "
                       "a GPU (the first batches pay for compiling; slower than plain PyTorch on a CPU)")
    train.add_argument("--smoke", action="store_true", help="a few thousand images, 2 epochs (as FMNIST_SMOKE=1)")
    train.add_argument("--final-fit", action="store_true", help="train on all 60,000 images, the validation "
                       "ones too: the last step once a recipe is chosen (how the reference checkpoints are made)")
    train.add_argument("--resume", metavar="LAST_CHECKPOINT",
                       help="carry on an interrupted run from its last checkpoint (NAME-last.pt)")
    train.add_argument("--runs", default=str(RUNS_ROOT), help="TensorBoard runs folder (default: runs/)")
    train.add_argument("--out", help="best checkpoint path (default: checkpoints/MODEL.pt, smoke: MODEL-smoke.pt); "
                       "the last one is saved beside it as NAME-last.pt")
    evaluate_p = commands.add_parser("evaluate", help="evaluate checkpoints on the 10,000 test images")
    evaluate_p.add_argument("checkpoint", type=Path, nargs="+")
    evaluate_p.add_argument("--json", action="store_true", help="print one JSON object per checkpoint")
    bench = commands.add_parser("bench", help="training images/s: the original recipe vs the fast path")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--compile", action="store_true", help="also time the compiled fast path (always on a GPU)")
    for sub in (train, evaluate_p):
        sub.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
        sub.add_argument("--data", default=str(DATA_ROOT), help="data root (default: data/)")
    args = parser.parse_args(argv)
    if args.command == "bench":  # instructor machinery lives in course_tools.py
        import course_tools
        return course_tools.main(["bench"] + ["--json"] * args.json + ["--compile"] * args.compile)
    try:
        {"train": train_command, "evaluate": evaluate_command}[args.command](args)
    except (CourseError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the checkpoints written so far are intact "
              "(continue with: python helpers.py train --resume NAME-last.pt)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
