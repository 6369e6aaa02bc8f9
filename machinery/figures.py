"""The course's matplotlib figures: the confusion matrix, the mistakes, a run's curves.

Drawing code, not training code: the notebooks call these by name from helpers.
"""
from __future__ import annotations

import numpy as np
import torch

from .basics import CLASSES


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


def plot_history(history, title: str = ""):
    """Loss and accuracy curves of a training run (a helpers.History), side by side; returns the
    figure."""
    import matplotlib.pyplot as plt
    epochs = range(1, history.epochs + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_loss.plot(epochs, history.train_loss, label="train")
    ax_loss.plot(epochs, history.valid_loss, label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss per image", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, history.valid_accuracy, color="C1")
    ax_acc.axvline(history.best_epoch, color="grey", linestyle=":",
                   label=f"best (epoch {history.best_epoch})")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy")
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_mistakes(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                  columns: int = 8, rows: int = 4):
    """The first columns x rows misclassified images, each captioned with its predicted class and,
    below it, the true class; returns the figure.

    One picture with the images pasted in: a subplot per image took most of a run summary's time."""
    import matplotlib.pyplot as plt
    width, height, caption = 34, 50, 20  # pixels per image, with room for its two-line caption
    canvas = np.ones((rows * height, columns * width))  # white around the images
    fig, ax = plt.subplots(figsize=(1.3 * columns, 1.9 * rows))
    for index, (image, label, prediction) in enumerate(zip(images[:rows * columns], labels,
                                                           predictions)):
        top, left = divmod(index, columns)
        top, left = top * height + caption, left * width + 3
        canvas[top:top + 28, left:left + 28] = image.squeeze(0).numpy()
        ax.text(left + 14, top - 1, f"{CLASSES[prediction]}\n(true: {CLASSES[label]})",
                ha="center", va="bottom", fontsize=7, color="C3")
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
    ax.set_title("Mistakes: predicted (true)")
    ax.axis("off")
    fig.tight_layout()
    return fig
