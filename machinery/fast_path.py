"""The fast path (stage 10): the data kept on the device, mixed precision, and compiling.

The whole uint8 dataset lives on the device and batches are cut, scaled and augmented there --
no per-image Python, no copy per step. DeviceLoader iterates like a DataLoader, so
helpers.train_one_epoch, evaluate and fit take it unchanged.
"""
from __future__ import annotations

import math
import re
import warnings

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset
from torchvision import datasets

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


def random_boxes(n: int, chance: float, generator: torch.Generator | None = None, size: int = 28,
                 area: tuple[float, float] = (0.02, 0.33), aspect: tuple[float, float] = (0.3, 3.3),
                 attempts: int = 10) -> torch.Tensor:
    """Rectangles [n, 4] (top, left, height, width) to erase, drawn as torchvision's RandomErasing does.

    Each image gets one with probability `chance`, the others height and width 0. A rectangle covers
    a random share `area` of the image, with a random aspect ratio height/width in `aspect` (drawn on
    a log scale), at a random place where it fits. Like torchvision, up to `attempts` draws per image,
    the first that fits inside the image is kept (here it must also stay in both ranges once rounded
    to whole pixels); an image none fits is not erased. Vectorised: no Python loop over images.
    """
    u = torch.rand(n, attempts, 2, generator=generator)
    pixels = size * size * (area[0] + (area[1] - area[0]) * u[..., 0])
    low, high = math.log(aspect[0]), math.log(aspect[1])
    ratio = torch.exp(low + (high - low) * u[..., 1])
    height, width = (pixels * ratio).sqrt().round().long(), (pixels / ratio).sqrt().round().long()
    share = height * width / (size * size)
    fits = ((height < size) & (width < size) & (share >= area[0]) & (share <= area[1])
            & (height >= aspect[0] * width) & (height <= aspect[1] * width))
    first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits (argmax: first maximum)
    height, width = height.gather(1, first).squeeze(1), width.gather(1, first).squeeze(1)
    where = torch.rand(n, 3, generator=generator)
    erased = (where[:, 0] < chance) & fits.any(dim=1)
    top, left = (where[:, 1] * (size - height + 1)).long(), (where[:, 2] * (size - width + 1)).long()
    return torch.stack([top, left, torch.where(erased, height, 0), torch.where(erased, width, 0)], dim=1)


def erase_boxes(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Images [B, 1, H, W] with each one's box (top, left, height, width) set to 0, the background."""
    top, left, height, width = (boxes[:, i, None] for i in range(4))        # each [B, 1]
    rows = torch.arange(images.shape[2], device=images.device)
    cols = torch.arange(images.shape[3], device=images.device)
    in_rows = (rows >= top) & (rows < top + height)                         # [B, H]
    in_cols = (cols >= left) & (cols < left + width)                       # [B, W]
    return images.masked_fill((in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1), 0)


class DeviceLoader:
    """Batches [B, 1, 28, 28] in 0-1 cut from uint8 tensors kept on `device`, like a DataLoader.

    augment=True shifts every image by up to 2 pixels and mirrors half of them, drawn per image;
    erase=p then sets one random rectangle of each image to 0 with probability p (random erasing).
    Both are for training batches only: evaluation loaders leave them off.
    channels_last stores batches in the memory layout that convolutions run fastest in.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 augment: bool = False, erase: float = 0.0, channels_last: bool = False) -> None:
        self.dataset, self.batch_size, self.shuffle, self.generator = dataset, batch_size, shuffle, generator
        self.device, self.augment, self.erase, self.channels_last = torch.device(device), augment, erase, channels_last
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
        if self.erase:  # drawn after the shifts and flips: erase=0 leaves every other random number as it was
            boxes = random_boxes(n, self.erase, self.generator).to(self.device, non_blocking=True)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.images[index].unsqueeze(1).float().div_(255)  # what ToTensor does, per batch
            if self.augment:
                images = shift_and_flip(images, shifts[start:start + len(index)], flips[start:start + len(index)])
            if self.erase:
                images = erase_boxes(images, boxes[start:start + len(index)])
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


def make_scaler(device: torch.device, precision: torch.dtype | None) -> torch.amp.GradScaler:
    """The gradient scaler fp16 needs (so small gradients do not round to zero); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == torch.float16)


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


