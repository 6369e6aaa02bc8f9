"""The fast path (stage 10): the data kept on the device, mixed precision, and compiling.

The whole uint8 dataset lives on the device and batches are cut, scaled and augmented there --
no per-image Python, no copy per step. DeviceLoader iterates like a DataLoader, so
helpers.train_one_epoch and evaluate take it unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset
from torchvision import datasets


def dataset_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images [N, 28, 28] and labels [N] behind a FashionMNIST dataset or a Subset of
    one."""
    indices = None
    while isinstance(dataset, Subset):  # a Subset of a Subset: compose the index lists
        outer = torch.as_tensor(list(dataset.indices))
        indices = outer if indices is None else outer[indices]
        dataset = dataset.dataset
    if not isinstance(dataset, datasets.FashionMNIST):
        raise TypeError(f"the fast path needs a FashionMNIST dataset (or a Subset of one), "
                        f"got {type(dataset).__name__}")
    if indices is None:
        return dataset.data, dataset.targets
    return dataset.data[indices], dataset.targets[indices]


def shift_and_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor,
                   pad: int = 2) -> torch.Tensor:
    """Per image: a 28x28 crop of the zero-padded image at `shifts` (0..2*pad), mirrored where
    `flips`."""
    batch, _, height, width = images.shape
    padded = nn.functional.pad(images, (pad, pad, pad, pad))
    rows = torch.arange(height, device=images.device) + shifts[:, :1]        # [B, 28]
    cols = torch.arange(width, device=images.device) + shifts[:, 1:]         # [B, 28]
    # a mirror image reads its columns backwards
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[torch.arange(batch, device=images.device)[:, None, None], 0,
                  rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def erase_boxes(images: torch.Tensor, boxes: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Random erasing: per image, the box `boxes` = (top, left, height, width) replaced by
    `noise`; a box of height 0 erases nothing."""
    rows = torch.arange(images.shape[2], device=images.device)[None, :, None]
    cols = torch.arange(images.shape[3], device=images.device)[None, None, :]
    top, left, height, width = (boxes[:, i, None, None] for i in range(4))
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return torch.where(inside.unsqueeze(1), noise, images)


def random_boxes(n: int, share: float, generator: torch.Generator | None,
                 size: int = 28) -> torch.Tensor:
    """Boxes for random erasing (Zhong et al., 2017): for a `share` of n images, a box of 2-40%
    of the image with a height:width ratio from 0.3 to 3.3; height 0 for the others."""
    area, ratio, top, left, chosen = torch.rand(5, n, generator=generator)
    area = (0.02 + 0.38 * area) * size * size
    ratio = torch.exp(math.log(0.3) + ratio * (math.log(3.3) - math.log(0.3)))
    # the smallest box (2% of the image, ratio 3.3) is still 2 pixels wide: no lower clamp
    height = (area * ratio).sqrt().round().clamp(max=size)
    width = (area / ratio).sqrt().round().clamp(max=size)
    top = (top * (size - height + 1)).floor()
    left = (left * (size - width + 1)).floor()
    height = torch.where(chosen < share, height, torch.zeros_like(height))
    return torch.stack([top, left, height, width], dim=1).long()


class DeviceLoader:
    """Batches [B, 1, 28, 28] in 0-1 cut from uint8 tensors kept on `device`, like a DataLoader.

    augment=True shifts every image by up to `shift` pixels and mirrors half of them, drawn per
    image, and erases a random box of an `erase` share of them: for training batches only
    (evaluation loaders leave it off).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 augment: bool = False, shift: int = 2, erase: float = 0.0) -> None:
        self.dataset, self.batch_size, self.shift, self.erase = dataset, batch_size, shift, erase
        self.shuffle, self.generator = shuffle, generator
        self.device, self.augment = torch.device(device), augment
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
            shifts = torch.randint(0, 2 * self.shift + 1, (n, 2),
                                   generator=self.generator).to(self.device, non_blocking=True)
            flips = (torch.rand(n, generator=self.generator) < 0.5).to(self.device,
                                                                       non_blocking=True)
        erasing = self.augment and self.erase > 0  # no draws otherwise: earlier runs repeat
        if erasing:
            boxes = random_boxes(n, self.erase, self.generator).to(self.device, non_blocking=True)
            # the noise that fills the boxes is drawn on the device, from a seed drawn here
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            noise = torch.Generator(self.device).manual_seed(seed)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            # what ToTensor does, per batch
            images = self.images[index].unsqueeze(1).float().div_(255)
            if self.augment:
                images = shift_and_flip(images, shifts[start:start + len(index)],
                                        flips[start:start + len(index)], self.shift)
            if erasing:
                images = erase_boxes(images, boxes[start:start + len(index)],
                                     torch.rand(images.shape, generator=noise,
                                                device=self.device))
            yield images, self.labels[index]


def has_amx() -> bool:
    """Whether this CPU has AMX, the bf16 matrix units of Intel Xeons since Sapphire Rapids."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def mixed_precision(device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """The autocast type for this device: bf16 on Ampere and newer, fp16 on older GPUs; on a CPU
    bf16 if asked (cpu_bf16) and its AMX units do it, else none.

    Decided by compute capability: a T4 (7.5) reports is_bf16_supported() as True, but only
    emulates bf16, slowly; its tensor cores do fp16. On a CPU, bf16 only with AMX units, the one
    kind of CPU where the course measured it (notebook 11: faster there).
    """
    if device.type != "cuda":
        return torch.bfloat16 if cpu_bf16 and device.type == "cpu" and has_amx() else None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def make_scaler(device: torch.device, precision: torch.dtype | None) -> torch.amp.GradScaler:
    """The gradient scaler fp16 needs (so small gradients do not round to zero); a no-op
    otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == torch.float16)


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Compile the network in place: fused kernels, and on a GPU CUDA graphs (few launches a step).

    nn.Module.compile keeps the module and its state_dict keys as they are, so checkpoints load
    into an uncompiled network. dynamic=False: one graph per batch shape (a full batch, the last
    one, the evaluation batch) instead of slower shape-generic code. The first batches pay for
    the compilation (tens of seconds); on a CPU the compiled network trains slower than eager
    PyTorch's own kernels (measured: see the README), so the course only uses it on a GPU.
    """
    model.compile(mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
    return model


