"""Images from outside the dataset (stage 7): checking what predict() is given, and turning a
photo of a garment into an image in Fashion-MNIST's style."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


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
            img = eight_bit(img).convert("RGBA")
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


def eight_bit(img):
    """A 16- or 32-bit grayscale image (as scanners and editors save) scaled to 8 bits, not clipped.

    Pillow's convert() clips such pixels at 255, which turns a 16-bit photo almost pure white.
    """
    from PIL import Image
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return img
    pixels = np.asarray(img, dtype=np.float64)
    top = 65535 if img.mode.startswith("I;16") or pixels.max() > 255 else 255  # "I" may hold 8-bit values too
    return Image.fromarray(np.uint8(np.clip(np.round(pixels / top * 255), 0, 255)), mode="L")
