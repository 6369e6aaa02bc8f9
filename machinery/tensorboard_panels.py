"""What the runner writes to TensorBoard beyond the four curves: one run fills every tab.

- at the start: the network's graph (Graphs), a grid of validation images (Images) and the loss
  chart (Custom Scalars);
- every epoch: each parameter's weights and last-step gradients (Histograms, Distributions);
- at the end, for the best epoch's weights: the confusion matrix and the mistakes (Images),
  one precision-recall curve per class (PR Curves), the penultimate layer of the first
  validation images with their pictures and class names (Projector) and the recipe with its
  results (HParams).

None of them draws a random number, so a logged run trains as an unlogged one (exactly, on a CPU).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.nn as nn
from torchvision.utils import make_grid

import helpers
from .basics import CLASSES
from .figures import plot_confusion_matrix, plot_mistakes
from .recipes import Recipe

# add_scalars("loss", {...}) would write each curve as a separate run (runs/x/loss_train, ...),
# cluttering the run list: the loop logs plain tags and asks for one chart in Custom Scalars.
LOSS_LAYOUT = {"Fashion-MNIST": {"loss: train vs validation": ["Multiline",
                                                               ["loss/train", "loss/valid"]]}}
EMBEDDED = 2_000  # validation images in the projector: a few thousand points stay responsive
GRID = 64         # validation images in the data grid


@contextmanager
def rng_untouched(device: torch.device):
    """Leave the random generators as they were: iterating a DataLoader draws a seed."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def log_start(writer, network: str, valid_loader, device: torch.device) -> None:
    """The Graphs tab (the network traced on one batch), a grid of validation images and the loss
    chart."""
    with rng_untouched(device):
        images, _ = next(iter(valid_loader))
        images = images[:GRID].cpu()
        model = helpers.build_model(network)  # a fresh copy: a compiled network cannot be traced
    with warnings.catch_warnings():  # add_graph traces with torch.jit, deprecated in torch 2.x
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        writer.add_graph(model, images)
    writer.add_image("data/validation_images", make_grid(images, nrow=16), 0)
    writer.add_custom_scalars(LOSS_LAYOUT)  # the chart fills as the epochs come
    writer.flush()


def log_histograms(writer, model: nn.Module, epoch: int) -> None:
    """Every parameter's weights, and its gradient of the epoch's last step."""
    for name, parameter in model.named_parameters():
        writer.add_histogram(f"weights/{name}", parameter.detach().float().cpu(), epoch)
        if parameter.grad is not None:
            writer.add_histogram(f"gradients/{name}", parameter.grad.float().cpu(), epoch)


@torch.no_grad()
def validation_outputs(model: nn.Module, loader, device: torch.device) -> dict[str, torch.Tensor]:
    """Images, labels, logits and penultimate features (the last Linear layer's input) of every
    validation image, on the CPU."""
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    features = []
    hook = last_linear.register_forward_hook(lambda m, inputs, out: features.append(inputs[0]))
    outputs = {"images": [], "labels": [], "logits": []}
    model.eval()
    try:
        with rng_untouched(device):
            for images, labels in loader:
                # forward, not model(...): a compiled network runs a graph traced before the
                # hook existed, which leaves the hook out
                outputs["logits"].append(model.forward(images.to(device)).float().cpu())
                outputs["images"].append(images.cpu())
                outputs["labels"].append(labels.cpu())
    finally:
        hook.remove()
    outputs["features"] = [f.float().cpu() for f in features]
    return {key: torch.cat(parts) for key, parts in outputs.items()}


@contextmanager
def weights_loaded(model: nn.Module, weights: dict | None):
    """The model holds `weights` inside the block and its own again after it (None: its own)."""
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if weights is not None:
        model.load_state_dict(weights)
    try:
        yield
    finally:
        model.load_state_dict(own)


def log_run_summary(writer, model: nn.Module, valid_loader, device: torch.device,
                    history: helpers.History, recipe: Recipe, best_weights: dict | None) -> None:
    """End of a run, for the best epoch's weights (the last epoch's when they are not at hand):
    confusion matrix, mistakes, PR curves, projector; the recipe and its results. The panels read
    the bare network in fp32, without a recipe's flip TTA or bf16, so their accuracy may differ a
    little from the logged validation accuracy."""
    from torch.utils.tensorboard.summary import hparams
    step = history.best_epoch if best_weights is not None else history.epochs
    with weights_loaded(model, best_weights):
        out = validation_outputs(model, valid_loader, device)
    predictions = out["logits"].argmax(dim=1)
    matrix = helpers.confusion_matrix(out["labels"], predictions)
    writer.add_figure("valid/confusion_matrix", plot_confusion_matrix(matrix), step)
    wrong = (predictions != out["labels"]).nonzero().flatten()
    writer.add_figure("valid/mistakes", plot_mistakes(out["images"][wrong], out["labels"][wrong],
                                                      predictions[wrong]), step)
    probabilities = torch.softmax(out["logits"], dim=1)
    for index, name in enumerate(CLASSES):  # one curve per class: this class against the rest
        writer.add_pr_curve(f"pr_curve/{name}", out["labels"] == index,
                            probabilities[:, index], step)
    writer.add_embedding(out["features"][:EMBEDDED], tag="penultimate_layer",
                         metadata=[CLASSES[label] for label in out["labels"][:EMBEDDED]],
                         label_img=out["images"][:EMBEDDED], global_step=step)
    params = {k: v for k, v in recipe.as_dict().items() if v is not None}
    results = {"hparam/best_valid_accuracy": max(history.valid_accuracy),
               "hparam/final_valid_loss": history.valid_loss[-1], "hparam/epochs": history.epochs}
    for summary in hparams(params, results):  # into this run itself (add_hparams makes a new one)
        writer.file_writer.add_summary(summary)
    for tag, value in results.items():
        writer.add_scalar(tag, value, history.epochs)
    writer.flush()
