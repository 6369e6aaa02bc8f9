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
    """The first columns x rows misclassified images, each titled with its predicted class and,
    below it, the true class; returns the figure."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax, image, label, prediction in zip(axes.flat, images, labels, predictions):
        ax.imshow(image.squeeze(0).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{CLASSES[prediction]}\n(true: {CLASSES[label]})", fontsize=8, color="C3")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Mistakes: predicted (true)")
    fig.tight_layout()
    return fig
