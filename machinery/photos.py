"""Images from outside the dataset (stage 7): checking what predict() is given, and turning a
photo of a garment into an image in Fashion-MNIST's style."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def as_image_batch(images: torch.Tensor) -> torch.Tensor:
    """Check and shape images as a float batch [N, 1, 28, 28] with values in 0-1."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.array(images))  # a copy: a PIL image's array is read-only
    given = tuple(images.shape)  # for the error message, before any reshaping
    if images.dtype == torch.uint8:
        images = images.float() / 255
    elif not images.is_floating_point():
        raise ValueError(f"images must be float (0-1) or uint8 (0-255), got dtype {images.dtype}")
    images = images.float()  # the networks' dtype: numpy's image / 255 is float64
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
    """A photo (any size, format, bit depth or colour mode Pillow opens) as a 1x28x28 image in
    Fashion-MNIST's style.

    Fashion-MNIST shows a light garment, centred, filling a black square. A photo is usually a
    dark garment on a light background: we invert it when its border is light, crop to the
    garment, pad it to a square and shrink it to 28x28.
    """
    from PIL import Image
    img = read_rgba(path)
    background = Image.new("RGBA", img.size, "white")  # transparent pixels become background...
    if light_cutout(img):  # ...but a white garment cut out would vanish on white: it gets black
        background = Image.new("RGBA", img.size, "black")
    gray = np.asarray(Image.alpha_composite(background, img).convert("L"), dtype=np.float32) / 255
    border = edge(gray)
    if border.mean() > 0.5:
        gray, border = 1 - gray, 1 - border
    # the brightest background (90th percentile of the border) becomes black: uneven light goes too
    floor = np.percentile(border, 90)
    gray = np.clip((gray - floor) / max(1 - floor, 1e-6), 0, 1)
    rows, cols = np.nonzero(gray > 0.1)
    if len(rows) == 0:
        raise ValueError(f"{path}: no garment found (the picture is empty or has no contrast)")
    garment = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    # stretch: the brightest part of a garment is white, as in the dataset
    garment = garment / garment.max()
    side = max(garment.shape)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - garment.shape[0]) // 2, (side - garment.shape[1]) // 2
    square[top:top + garment.shape[0], left:left + garment.shape[1]] = garment
    # rounded, not truncated: float32 puts an inverted photo's levels a hair under a whole number
    small = Image.fromarray(np.uint8(np.round(square * 255))).resize(
        (28, 28), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255).unsqueeze(0)


def read_rgba(path: Path | str):
    """The picture at path, upright, as 8-bit RGBA whatever its mode and depth, or a ValueError
    that says why not.

    Pillow's convert() handles CMYK (Adobe's inverted JPEGs too), palettes and their transparency,
    1-bit, LAB and alpha; eight_bit() first brings down what it would clip.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    if not Path(path).is_file():
        raise ValueError(f"no photo at {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # phones store rotation as metadata
            img = eight_bit(img).convert("RGBA")
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image that can be read "
                         f"(PNG or JPEG expected)") from None
    # Pillow's guard against files that unpack to gigabytes
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path} is too large to open ({e}): "
                         f"shrink it to a few thousand pixels a side") from None
    except (OSError, ValueError) as e:  # a truncated or damaged image file
        raise ValueError(f"{path} is a damaged image ({e}): save or download it again") from None
    return img


def edge(pixels: np.ndarray) -> np.ndarray:
    """The pixels along the four sides of a picture, where a photo shows its background."""
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])


def light_cutout(img) -> bool:
    """Whether a picture is a cut-out (transparent all round) of a subject so light it would
    vanish on white."""
    alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255
    # its background is not transparent, or all of it is
    if edge(alpha).mean() > 0.5 or alpha.sum() == 0:
        return False
    gray = np.asarray(img.convert("L"), dtype=np.float32) / 255  # its colour, as if it were opaque
    # most of it near white (a white shirt), not just light: a photo of a light garment on white is
    # what Fashion-MNIST inverted, so a mid-grey cut-out stays on white as its photo would have been
    return float((alpha * (gray > 0.9)).sum() / alpha.sum()) > 0.5


DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # what convert() would clip at 255


def eight_bit(img):
    """A grayscale image deeper than 8 bits (16- or 32-bit integer, or float) scaled to 8 bits,
    not clipped.

    Pillow's convert() clips such pixels at 255, which turns a 16-bit photo almost pure white.
    """
    from PIL import Image
    if img.mode not in DEEP_MODES:
        return img
    pixels = np.asarray(img, dtype=np.float64)
    # float files mark a pixel with no value NaN: it becomes transparent
    measured = np.isfinite(pixels)
    black, white = black_and_white(img.mode, pixels[measured]) if measured.any() else (0.0, 1.0)
    gray = np.clip(np.round((np.where(measured, pixels, black) - black) / (white - black) * 255),
                   0, 255)
    return Image.merge("LA", [Image.fromarray(np.uint8(gray)),
                              Image.fromarray(np.uint8(measured) * 255)])


def black_and_white(mode: str, pixels: np.ndarray) -> tuple[float, float]:
    """The values standing for black and white: the format's own range where it has one, else the
    picture's."""
    low, high = float(pixels.min()), float(pixels.max())
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    if low < 0:  # signed data (a measurement, not light): only its own range says what is bright
        return low, max(high, low + 1)
    # 32-bit integer and float files do not say their range: floats hold 0-1 by convention, and
    # either may hold 8- or 16-bit values; beyond those, the brightest pixel is white
    for top in ((1.0,) if mode == "F" else ()) + (255.0, 65535.0):
        if high <= top:
            return 0.0, top
    return 0.0, max(high, 1.0)
