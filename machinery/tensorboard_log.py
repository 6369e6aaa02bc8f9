"""TensorBoard: the run summary helpers.fit writes at the end of a run, and reading runs back.

add_scalars("loss", {...}) would write each curve as a separate run (runs/x/loss_train,
runs/x/loss_valid), cluttering the run list. fit logs plain tags and asks for one combined chart
in the Custom Scalars tab instead (LOSS_LAYOUT).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from .figures import plot_confusion_matrix

LOSS_LAYOUT = {"Fashion-MNIST": {"loss: train vs validation": ["Multiline", ["loss/train", "loss/valid"]]}}


@torch.no_grad()
def log_run_summary(writer, model: torch.nn.Module, valid_loader, device: torch.device, history, recipe) -> None:
    """End of a run: one loss chart, the validation confusion matrix as an image, the recipe and its results."""
    from torch.utils.tensorboard.summary import hparams
    model.eval()
    # what helpers.predict_all and helpers.confusion_matrix do (stage 8), in two lines
    labels, predictions = zip(*[(y.cpu(), model(x.to(device)).argmax(1).cpu()) for x, y in valid_loader])
    matrix = torch.bincount(torch.cat(labels) * 10 + torch.cat(predictions), minlength=100).reshape(10, 10)
    writer.add_custom_scalars(LOSS_LAYOUT)  # the Custom Scalars tab: train and valid loss on one chart
    writer.add_figure("valid/confusion_matrix", plot_confusion_matrix(matrix), history.epochs)
    params = {k: v for k, v in asdict(recipe).items() if v is not None}
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
