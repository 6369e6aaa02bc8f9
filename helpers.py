"""What the notebooks teach, in the order of the stages: data, the networks, loss and optimizer, the
training loop with its checkpoints, prediction, evaluation, loading a checkpoint back, seeds against
noise. Notebook 6's train_one_epoch, evaluate, EarlyStopping and fit, notebook 7's feature_maps and
occlusion_map, notebook 8's sign_test and notebook 10's compare_seeds are written out in their
notebooks as they are here (a test compares them); the notebooks call the rest, and your own code
may too. What students of stages 1-9 never need to read (dataset integrity, the checkpoint file,
the course's runner with resume, mixed precision and one-cycle, the command line) is in
`machinery/`; stages 10 and 11 open its networks and recipes."""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader, Dataset, Subset, random_split
from torchvision import datasets, transforms

from machinery.basics import (  # noqa: F401  (names the notebooks and you import from here)
    CHECKPOINTS, CLASSES, DATA_ROOT, REFERENCE, REPO_ROOT, RUNS_ROOT, CheckpointError,
    CourseError, DatasetError, describe_checkpoint, machine, pick_device, progress, smoke_mode)
from machinery.checkpoint_file import checkpoint_payload, load_weights, read_checkpoint
from machinery.checkpoint_file import write_atomically
from machinery.colab import course_checkpoint  # noqa: F401  (stages 7-9: yours, else the reference)
from machinery.dataset import prepare_data
from machinery.figures import plot_confusion_matrix, plot_history  # noqa: F401
from machinery.networks import ImprovedCNN, SprintCNN
from machinery.photos import as_image_batch, load_photo  # noqa: F401
from machinery.recipes import (  # noqa: F401
    RECIPES, Recipe, checkpoint_paths, course_recipe, run_name)
from machinery.tensorboard_log import plot_runs, read_scalars  # noqa: F401

if TYPE_CHECKING:  # the type hint only: importing helpers never loads TensorBoard's writer
    from torch.utils.tensorboard import SummaryWriter


# ---- Stages 1-3 -- Data: the real Fashion-MNIST, a seeded validation split, mini-batches ---------

def split_train_valid(train: Dataset, seed: int = 42) -> tuple[Subset, Subset]:
    """The course's 50,000 / 10,000 train / validation split: seeded, so identical for everyone."""
    return random_split(train, [50_000, 10_000], generator=torch.Generator().manual_seed(seed))


def first(dataset: Dataset, size: int | None) -> Dataset:
    """The first `size` samples of a dataset (all of it when size is None)."""
    return dataset if size is None or size >= len(dataset) else Subset(dataset, range(size))


def load_datasets(recipe: Recipe | None = None, root: Path | str = DATA_ROOT,
                  transform=None) -> tuple[Dataset, Dataset, Dataset]:
    """Train, validation and test sets as torchvision datasets (ToTensor by default).

    The recipe's sizes (smoke mode: 1,000 training images) keep the first images of each set.
    `transform` applies to all three sets alike: augment the training images in the loop."""
    recipe = recipe or course_recipe()
    transform = transform or transforms.ToTensor()
    root = prepare_data(root)  # the four original files, checked (machinery/dataset.py)
    full_train = datasets.FashionMNIST(root, train=True, download=False, transform=transform)
    test = datasets.FashionMNIST(root, train=False, download=False, transform=transform)
    train, valid = split_train_valid(full_train)
    return (first(train, recipe.train_size), first(valid, recipe.valid_size),
            first(test, recipe.test_size))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a generator for the DataLoader's shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> DataLoader:
    """A DataLoader that is safe on Colab's 2 vCPUs and on CPU-only machines; `device` is where
    training runs ('cuda': batches go to the GPU from pinned memory)."""
    # num_workers=0: the images are in memory already; worker processes would compete with training
    on_gpu = device is not None and torch.device(device).type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=0, pin_memory=on_gpu)


# ---- Stage 4 -- The networks ---------------------------------------------------------------------

class FMnistCNN(nn.Module):
    """The original notebook's CNN (242,250 parameters, same names), dropout fixed: its
    F.dropout(x, 0.5) stayed on after model.eval(); nn.Dropout follows train()/eval()."""

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
        # logits: CrossEntropyLoss applies log-softmax itself
        return self.linear2(torch.relu(self.dropout(x)))


# The course's networks by name: a new network is one entry here (and a recipe that names it).
NETWORKS: dict[str, type[nn.Module]] = {"original": FMnistCNN, "improved": ImprovedCNN,
                                        "sprint": SprintCNN}


def build_model(name: str = "original") -> nn.Module:
    """A fresh network by its course name; the one place that checks network names."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}: choose one of {', '.join(NETWORKS)}")
    return NETWORKS[name]()


def network_name(model: nn.Module) -> str | None:
    """The course name of a network ('original', ...); None for a network of your own."""
    return next((name for name, cls in NETWORKS.items() if type(model) is cls), None)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- Stage 5 -- Loss, optimizer, scheduler -------------------------------------------------------

def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """Adam (or AdamW) with the recipe's learning rate and weight decay."""
    adam = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer,
                   recipe: Recipe) -> ReduceLROnPlateau:
    """ReduceLROnPlateau on the validation loss (no verbose=: removed in torch 2.7)."""
    if recipe.schedule != "plateau":  # one-cycle is built by the course's runner (stage 10)
        raise ValueError(f"recipe {recipe.name!r} uses the {recipe.schedule} schedule: "
                         f"make_scheduler builds stage 5's plateau schedule only")
    return ReduceLROnPlateau(
        optimizer, mode="min", factor=recipe.lr_factor, patience=recipe.lr_patience)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the optimizer's first parameter group."""
    return optimizer.param_groups[0]["lr"]


# ---- Stage 6 -- The training loop: train, validate, keep the best, stop early --------------------
# Notebook 6 writes train_one_epoch, evaluate, EarlyStopping and fit as they are here, without
# the type hints (tests/test_notebooks.py compares the code).

def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device) -> float:
    """One pass over the training data; returns the mean loss per image."""
    model.train()                                  # dropout on; BatchNorm: each batch's statistics
    total_loss, seen = 0.0, 0
    for images, labels in progress(loader, "train"):   # a progress bar with the time left
        images, labels = images.to(device), labels.to(device)
        loss = loss_fn(model(images), labels)      # forward and loss: the mean over this batch
        optimizer.zero_grad()                      # forget the previous step's gradients
        loss.backward()                            # backward: compute the gradients
        optimizer.step()                           # step: update the weights
        total_loss += loss.detach() * len(labels)  # on the device: no wait for a GPU at every step
        seen += len(labels)
    return float(total_loss) / seen


@torch.no_grad()                                   # no gradients: faster, less memory
def evaluate(model: nn.Module, loader: DataLoader, loss_fn: nn.Module,
             device: torch.device) -> tuple[float, float]:
    """Mean loss per image and accuracy (0-1) on images the network does not learn from."""
    model.eval()                                   # BatchNorm's running statistics, dropout off
    total_loss, correct = 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += loss_fn(logits, labels) * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
    return float(total_loss) / len(loader.dataset), int(correct) / len(loader.dataset)


class EarlyStopping:
    """Stop when the validation loss has not improved for `patience` epochs in a row."""

    def __init__(self, patience: int = 7) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.bad_epochs = 0

    def step(self, valid_loss: float) -> bool:
        """Record one epoch's validation loss; True means stop now (a tie is no improvement)."""
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
    best_epoch: int = 0             # the best validation accuracy's epoch (of a tie, the earlier)
    stopped_early: bool = False
    interrupted: bool = False       # set by the course's runner (machinery/engine.py) on Ctrl-C

    @property
    def epochs(self) -> int:
        """How many epochs the run has recorded."""
        return len(self.train_loss)

    def record(self, **figures: float) -> None:
        """Append one epoch's figures: record(train_loss=0.31, valid_loss=0.29, ...)."""
        for name, value in figures.items():
            getattr(self, name).append(value)


def save_checkpoint(path: Path | str, model: nn.Module, **about) -> Path:
    """torch.save of the state_dict, with what the weights are (network, epoch, figures, ...)."""
    payload = checkpoint_payload(model, network_name(model), **about)
    return write_atomically(payload, path)  # a crash mid-write never leaves half a file at `path`


def fit(model: nn.Module, train_loader: DataLoader, valid_loader: DataLoader,
        loss_fn: nn.Module, optimizer: torch.optim.Optimizer, scheduler: ReduceLROnPlateau,
        device: torch.device, *, epochs: int, best_path: Path | str | None = None,
        writer: SummaryWriter | None = None, patience: int = 7,
        log: Callable[[str], None] = print) -> History:
    """Train for up to `epochs` epochs: validate, log, keep the best, slow down, stop early."""
    history, early_stopping = History(), EarlyStopping(patience)
    for epoch in range(1, epochs + 1):
        start, lr = time.perf_counter(), current_lr(optimizer)
        train_loss = train_one_epoch(model, train_loader, loss_fn, optimizer, device)
        valid_loss, valid_accuracy = evaluate(model, valid_loader, loss_fn, device)
        history.record(train_loss=train_loss, valid_loss=valid_loss, lr=lr,
                       valid_accuracy=valid_accuracy, seconds=time.perf_counter() - start)
        log(f"epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  valid loss {valid_loss:.4f}"
            f"  valid acc {valid_accuracy:6.2%}  lr {lr:.0e}  {history.seconds[-1]:5.1f} s"
            f"  (~{(epochs - epoch) * history.seconds[-1] / 60:.0f} min left)")

        if writer is not None:                     # one tag per curve, step = epoch
            writer.add_scalar("loss/train", train_loss, epoch)
            writer.add_scalar("loss/valid", valid_loss, epoch)
            writer.add_scalar("accuracy/valid", valid_accuracy, epoch)
            writer.add_scalar("learning_rate", lr, epoch)
            writer.flush()                         # a dashboard shows each epoch as it ends

        if valid_accuracy > max(history.valid_accuracy[:-1], default=-1.0):  # the best so far
            history.best_epoch = epoch
            if best_path is not None:
                save_checkpoint(best_path, model, epoch=epoch, metrics={
                    "train_loss": train_loss, "valid_loss": valid_loss,
                    "valid_accuracy": valid_accuracy})

        scheduler.step(valid_loss)                 # ReduceLROnPlateau watches the validation loss
        if current_lr(optimizer) != lr:            # what the original's verbose=True printed
            log(f"          learning rate reduced: {lr:.0e} -> {current_lr(optimizer):.0e}")

        if early_stopping.step(valid_loss):
            history.stopped_early = True
            log(f"          early stop: {patience} epochs without a better validation loss")
            break
    return history


# ---- Stage 7 -- Prediction: classes, probabilities, and what the network sees --------------------

@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor,
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class indices [N] and class probabilities [N, 10] for one image or a batch."""
    model.eval()
    probabilities = torch.softmax(model(as_image_batch(images).to(device)), dim=1).cpu()
    return probabilities.argmax(dim=1), probabilities


# Notebook 7 writes feature_maps and occlusion_map as they are here, without the type hints.

@torch.no_grad()
def feature_maps(model: nn.Module, images: torch.Tensor, layers: dict[str, nn.Module],
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """What each named layer outputs for a batch of images, caught by forward hooks."""
    model.eval()
    maps = {}

    def keep(name):
        def hook(module, inputs, output):          # PyTorch calls it after module.forward
            # a copy (on the CPU .cpu() is none): an in-place layer after this one, such as
            # ReLU(inplace=True), would otherwise change the stored map
            maps[name] = output.detach().to("cpu", copy=True)
        return hook

    hooks = [layer.register_forward_hook(keep(name)) for name, layer in layers.items()]
    try:
        model(as_image_batch(images).to(device))
    finally:
        for hook in hooks:                         # a forgotten hook would run on every call
            hook.remove()
    return maps


@torch.no_grad()
def occlusion_map(model: nn.Module, image: torch.Tensor, target: int, patch: int = 4,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """How far class `target`'s probability falls when a patch x patch square around each pixel
    is blacked out: [28, 28], the mean over the squares that cover the pixel."""
    model.eval()
    image = as_image_batch(image)[0]               # [1, 28, 28]
    size = image.shape[-1]
    corners = [(y, x) for y in range(size - patch + 1) for x in range(size - patch + 1)]
    covered = image.repeat(len(corners), 1, 1, 1)  # one copy per square
    for copy, (y, x) in zip(covered, corners):
        copy[:, y:y + patch, x:x + patch] = 0      # 0 is the background's black
    batch = torch.cat([image.unsqueeze(0), covered]).to(device)
    probability = torch.softmax(model(batch), dim=1)[:, target].cpu()
    drop, count = torch.zeros(size, size), torch.zeros(size, size)
    for fall, (y, x) in zip(probability[0] - probability[1:], corners):
        drop[y:y + patch, x:x + patch] += fall
        count[y:y + patch, x:x + patch] += 1
    return drop / count


# ---- Stage 8 -- Evaluation: the whole test set, the mistakes, paired comparisons -----------------

@torch.no_grad()
def predict_all(model: nn.Module, loader: DataLoader,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """True labels and predicted classes for every image of a loader (on the CPU)."""
    model.eval()
    labels, predictions = [], []
    for images, batch_labels in loader:
        predictions.append(model(images.to(device)).argmax(dim=1).cpu())
        labels.append(batch_labels.cpu())  # the fast path's labels live on the device
    return torch.cat(labels), torch.cat(predictions)


# Notebook 8 writes sign_test as it is here, without the type hints.

def sign_test(a_only: int, b_only: int) -> float:
    """Two-sided exact sign test: how often a fair coin splits a_only + b_only images at least
    this unevenly."""
    n, k = a_only + b_only, min(a_only, b_only)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor,
                     num_classes: int = 10) -> torch.Tensor:
    """Counts [true class, predicted class]."""
    return torch.bincount(labels * num_classes + predictions,
                          minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def most_confused(matrix: torch.Tensor, k: int = 5) -> list[tuple[str, str, int]]:
    """The k most frequent mistakes as (true class, predicted class, count)."""
    counts, indices = matrix.clone().fill_diagonal_(0).flatten().topk(k)
    n = matrix.shape[0]
    return [(CLASSES[i // n], CLASSES[i % n], int(c))
            for c, i in zip(counts, indices.tolist()) if c > 0]


# ---- Stage 9 -- Loading a checkpoint back --------------------------------------------------------

def load_checkpoint(path: Path | str, device: torch.device | str = "cpu",
                    model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """The saved network in eval mode, and what the checkpoint says about it.

    A course network is rebuilt by its name; for a network of your own, pass a fresh one:
    load_checkpoint(path, model=MyNetwork())."""
    payload = read_checkpoint(path, device)  # machinery/checkpoint_file.py: readable errors
    if model is None:
        if payload.get("model") not in NETWORKS:
            raise CheckpointError(
                f"{path} holds a network of your own ({payload.get('architecture') or 'unnamed'}),"
                f" not one of the course's: pass a fresh one, "
                f"load_checkpoint(path, model=YourNetwork())")
        model = build_model(payload["model"])
    model = load_weights(model, payload, path).to(device).eval()
    return model, {k: v for k, v in payload.items() if k not in ("state_dict", "training_state")}


# ---- Stage 10 -- Telling an effect from seed-to-seed noise ---------------------------------------
# Notebook 10 writes compare_seeds as it is here, without the type hints.

def compare_seeds(runs: list[float], baseline: list[float]) -> tuple[float, float]:
    """Mean of `runs` minus mean of `baseline` (one figure per seed each), and the larger of their
    two seed-to-seed spreads (max - min): a difference within the spread is noise."""
    spread = max(max(runs) - min(runs), max(baseline) - min(baseline))
    return sum(runs) / len(runs) - sum(baseline) / len(baseline), spread


if __name__ == "__main__":  # python helpers.py train | evaluate | bench: see machinery/cli.py
    from machinery.cli import main
    raise SystemExit(main())
