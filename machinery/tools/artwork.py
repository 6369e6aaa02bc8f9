"""The pictures in images/, drawn from the real data and the real network: the class sprite, the
architecture diagram (computed from helpers.FMnistCNN) and the photo-like sample for stage 7."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision import datasets

import helpers
from ..basics import REPO_ROOT

IMAGES = REPO_ROOT / "images"


def make_sprite(path: Path = IMAGES / "fashion-mnist-sprite.png", per_class: int = 16) -> Path:
    """A grid of real test images: one row per class, labelled (shown at the top of the
    notebooks)."""
    import matplotlib
    matplotlib.use("agg")  # draw to files, never to a window
    import matplotlib.pyplot as plt
    test = datasets.FashionMNIST(helpers.prepare_data(), train=False, download=False)
    rows = []
    for label in range(10):
        indices = (test.targets == label).nonzero().flatten()[:per_class]
        rows.append(np.hstack([test.data[i].numpy() for i in indices]))
    fig, ax = plt.subplots(figsize=(per_class * 0.6 + 1.6, 10 * 0.6))
    ax.imshow(255 - np.vstack(rows), cmap="gray")  # dark garments on white read better on a page
    ax.set_yticks([28 * i + 14 for i in range(10)], helpers.CLASSES)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_sample_photo(path: Path = IMAGES / "sample-photo.jpg", index: int = 0) -> Path:
    """A photo-like JPEG for stage 7 (no real photo is needed offline): a real test image,
    enlarged, as a dark-blue garment on a light, uneven, noisy background, off-centre, like a
    phone picture."""
    from PIL import Image, ImageFilter
    test = datasets.FashionMNIST(helpers.prepare_data(), train=False, download=False)
    garment = Image.fromarray(test.data[index].numpy()).resize((336, 336),
                                                               Image.Resampling.BICUBIC)
    ink = (np.asarray(garment.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)[..., None]
           / 255)
    height, width = 480, 640
    rng = np.random.default_rng(0)
    shade = (np.linspace(0.95, 0.80, width)[None, :, None]
             * np.linspace(1.0, 0.92, height)[:, None, None])
    background = np.clip(shade * np.array([236, 230, 222]) + rng.normal(0, 4, (height, width, 3)),
                         0, 255)
    top, left = 70, 190
    window = background[top:top + 336, left:left + 336]
    background[top:top + 336, left:left + 336] = (1 - ink) * window + ink * np.array([38, 52, 96])
    Image.fromarray(np.uint8(background)).save(path, quality=88)
    return path


def make_architecture_diagram(path: Path = IMAGES / "architecture.png") -> Path:
    """The original CNN as boxes with output shapes and parameter counts, computed from the
    model."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch
    model = helpers.FMnistCNN()

    def params(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    boxes = [
        ("input", "1 x 28 x 28", "image", 0, "#dddddd"),
        ("conv_block1", "32 x 14 x 14", "Conv 3x3 (32)\nBatchNorm\nReLU\nMaxPool 2",
         params(model.conv_block1), "#9ecae1"),
        ("conv_block2", "64 x 7 x 7", "Conv 3x3 (64)\nBatchNorm\nDropout 0.2\nReLU\nMaxPool 2",
         params(model.conv_block2), "#6baed6"),
        ("conv_block3", "128 x 3 x 3", "Conv 3x3 (128)\nBatchNorm\nDropout 0.4\nReLU\nMaxPool 2",
         params(model.conv_block3), "#4292c6"),
        ("flatten", "1152", "x.flatten(1)", 0, "#dddddd"),
        ("linear1, batch_norm", "128", "Linear 1152->128\nBatchNorm1d\nDropout 0.5\nReLU",
         params(model.linear1, model.batch_norm), "#fdae6b"),
        ("linear2", "10 logits", "Linear 128->10", params(model.linear2), "#e6550d"),
    ]
    fig, ax = plt.subplots(figsize=(15, 4.2))
    width, gap = 1.75, 0.45
    for i, (name, shape, body, count, colour) in enumerate(boxes):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0.2), width, 2.6, boxstyle="round,pad=0.05", fc=colour,
                                    ec="black"))
        ax.text(x + width / 2, 2.55, name, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x + width / 2, 1.55, body, ha="center", va="center", fontsize=9)
        ax.text(x + width / 2, 0.45, f"{count:,} params" if count else "no params", ha="center",
                fontsize=8.5)
        ax.text(x + width / 2, 3.1, shape, ha="center", fontsize=10, color="#333333")
        if i:
            ax.annotate("", xy=(x - 0.03, 1.5), xytext=(x - gap + 0.03, 1.5),
                        arrowprops=dict(arrowstyle="->", lw=1.5))
    total = helpers.count_parameters(model)
    ax.set_title(f"FMnistCNN: {total:,} parameters (output shape above each box)", fontsize=12)
    ax.set_xlim(-0.2, len(boxes) * (width + gap))
    ax.set_ylim(0, 3.5)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

