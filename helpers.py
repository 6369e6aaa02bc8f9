"""The course's shared code, in the order of the stages: data, networks, loss and optimizer, the
training loop, prediction, checkpoints. A notebook writes each mechanism out where it teaches it,
then calls it from here. What students never need to read (dataset integrity, the fast path, exact
resume, the checkpoint file, TensorBoard summaries, the command line) is in `machinery/`."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset, random_split
from torchvision import datasets, transforms

from machinery.basics import (CHECKPOINTS, CLASSES, DATA_ROOT, REFERENCE, REPO_ROOT, RUNS_ROOT,  # noqa: F401
                              CheckpointError, CourseError, DatasetError, course_checkpoint, describe_checkpoint,
                              machine, pick_device, progress, smoke_mode)
from machinery.checkpoint_file import CHECKPOINT_FORMAT, load_weights, read_checkpoint, write_atomically
from machinery.dataset import prepare_data
from machinery.fast_path import DeviceLoader, compile_model, make_scaler, mixed_precision, step_after_update
from machinery.figures import plot_confusion_matrix, plot_history  # noqa: F401
from machinery.networks import ImprovedCNN
from machinery.photos import as_image_batch, load_photo  # noqa: F401
from machinery.recipes import RECIPES, Recipe, checkpoint_paths, course_settings, run_name  # noqa: F401
from machinery.resume import interrupted_note, restore_training, training_state
from machinery.tensorboard_log import log_run_summary, plot_runs, read_scalars  # noqa: F401


# ---- Stages 1-3 -- Data: the real Fashion-MNIST, a seeded validation split, mini-batches ---------

def split_train_valid(train: Dataset, seed: int = 42) -> tuple[Subset, Subset]:
    """The course's 50,000 / 10,000 train / validation split: seeded, so identical for everyone."""
    return random_split(train, [50_000, 10_000], generator=torch.Generator().manual_seed(seed))


def first(dataset: Dataset, size: int | None) -> Dataset:
    """The first `size` samples of a dataset (all of it when size is None)."""
    return dataset if size is None or size >= len(dataset) else Subset(dataset, range(size))


def load_datasets(settings: Recipe | None = None, root: Path | str = DATA_ROOT,
                  transform=None) -> tuple[Dataset, Dataset, Dataset]:
    """Train, validation and test sets as torchvision datasets (ToTensor by default)."""
    settings = settings or course_settings()
    transform = transform or transforms.ToTensor()
    root = prepare_data(root)  # the four original files, checked (machinery/dataset.py)
    full_train = datasets.FashionMNIST(root, train=True, download=False, transform=transform)
    test = datasets.FashionMNIST(root, train=False, download=False, transform=transform)
    train, valid = split_train_valid(full_train)
    if settings.final_fit:  # the recipe is chosen: learn from the validation images too
        train = Subset(full_train, [*train.indices, *valid.indices])
    return (first(train, settings.train_size), first(valid, settings.valid_size),
            first(test, settings.test_size))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a generator for the DataLoader's shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, device: torch.device | None = None) -> DataLoader:
    """A DataLoader that is safe on Colab's 2 vCPUs and on CPU-only machines."""
    # num_workers=0: the images are in memory already; worker processes would compete with training
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=0, pin_memory=device is not None and device.type == "cuda")


# ---- Stage 4 -- The networks ---------------------------------------------------------------------

class FMnistCNN(nn.Module):
    """The original notebook's CNN (242,250 parameters, same names), dropout fixed: its F.dropout(x, 0.5)
    stayed on after model.eval(); nn.Dropout follows train()/eval() and has no weights to load."""

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
        return self.linear2(torch.relu(self.dropout(x)))  # logits: CrossEntropyLoss adds the softmax


# The course's networks by name: a new network is one entry here (and a recipe that names it).
NETWORKS: dict[str, type[nn.Module]] = {"original": FMnistCNN, "improved": ImprovedCNN}


def build_model(name: str = "original") -> nn.Module:
    """A fresh network by its course name; the one place that checks network names."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}: choose one of {', '.join(NETWORKS)}")
    return NETWORKS[name]()


def model_name(model: nn.Module) -> str:
    """The course name of a network instance ('original', ...)."""
    return next(name for name, cls in NETWORKS.items() if type(model) is cls)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- Stage 5 -- Loss, optimizer, scheduler -------------------------------------------------------

def make_optimizer(model: nn.Module, settings: Recipe) -> torch.optim.Optimizer:
    """Adam (or AdamW) with the recipe's learning rate and weight decay."""
    adam = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: Recipe, steps_per_epoch: int | None = None):
    """ReduceLROnPlateau on the validation loss (no verbose=: removed in torch 2.7), or (stage 10)
    one-cycle: up to settings.lr and down to almost zero, one step per batch, so it needs steps_per_epoch."""
    if settings.schedule == "onecycle":
        if not steps_per_epoch:
            raise ValueError("the one-cycle schedule needs steps_per_epoch (len(train_loader))")
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, epochs=settings.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=settings.lr_factor, patience=settings.lr_patience)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the optimizer's first parameter group."""
    return optimizer.param_groups[0]["lr"]


# ---- Stage 6 -- The training loop: train, validate, keep the best, stop early --------------------

def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    precision: torch.dtype | None = None, scheduler=None,
                    scaler: torch.amp.GradScaler | None = None) -> float:
    """One pass over the training data; returns the mean training loss per image. Stage 10 adds mixed
    precision (fp16 or bf16 on a GPU, with a gradient scaler) and a per-batch scheduler (one-cycle)."""
    model.train()
    scaler = scaler or make_scaler(device, precision)
    total_loss = torch.zeros((), device=device)  # summed on the device: no GPU sync per step
    seen = 0
    for images, labels in progress(loader, "train"):  # a bar with the time left in this epoch
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            logits = model(images)              # 1. forward
            loss = loss_fn(logits, labels)      # 2. loss (mean over the batch)
        optimizer.zero_grad(set_to_none=True)   # 3. forget the previous step's gradients
        scaler.scale(loss).backward()           # 4. backward: compute the gradients
        scaler.step(optimizer)                  # 5. step: update the weights
        scaler.update()
        if scheduler is not None:
            step_after_update(scheduler, scaler)
        total_loss += loss.detach().float() * len(labels)  # the batch mean, weighted by its size
        seen += len(labels)
    return total_loss.item() / seen


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, loss_fn: nn.Module,
             device: torch.device, flip_tta: bool = False) -> tuple[float, float]:
    """Mean loss per image and accuracy (0-1) of the model in eval mode; flip_tta=True (test-time
    augmentation, stage 10) averages the logits of each image and its mirror image."""
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        if flip_tta:
            logits = (logits + model(images.flip(3))) / 2
        total_loss += loss_fn(logits, labels) * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
    n = len(loader.dataset)
    return total_loss.item() / n, correct.item() / n


class EarlyStopping:
    """Stop when the validation loss has not improved for `patience` epochs in a row (a tie is no improvement)."""

    def __init__(self, patience: int = 7) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.bad_epochs = 0

    def step(self, valid_loss: float) -> bool:
        """Record one epoch's validation loss; True means stop now."""
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
    best_epoch: int = 0             # the best validation accuracy's epoch (of a tie, the earlier one)
    stopped_early: bool = False
    interrupted: bool = False

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def record(self, **figures: float) -> None:
        """Append one epoch's figures: record(train_loss=0.31, valid_loss=0.29, ...)."""
        for name, value in figures.items():
            getattr(self, name).append(value)


def save_checkpoint(path: Path | str, model: nn.Module, *, recipe: Recipe | None = None,
                    epoch: int | None = None, metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Save the weights with what they are (network, recipe, epoch, figures), atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "model": model_name(model), "architecture": type(model).__name__,
               "recipe": recipe.name if recipe else None, "settings": recipe.as_dict() if recipe else None,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "epoch": epoch, "metrics": dict(metrics or {}), "classes": list(CLASSES),
               "torch_version": str(torch.__version__), "machine": machine(),  # where it trained, threads included
               "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
               **(extra or {})}
    return write_atomically(payload, path)  # a crash mid-write never leaves half a file at `path`


def fit(model: nn.Module, train_loader: DataLoader, valid_loader: DataLoader, *, recipe: Recipe,
        loss_fn: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, scheduler=None,
        writer=None, early_stopping: EarlyStopping | None = None, best_path: Path | str | None = None,
        last_path: Path | str | None = None, resume: Path | str | None = None, log=print) -> History:
    """Notebook 6's epoch loop, plus what a long run needs: resume=last_path, and a clean Ctrl-C."""
    precision = mixed_precision(device) if recipe.fast else None  # stage 10: bf16 or fp16 on a GPU
    scaler = make_scaler(device, precision)  # one per run: fp16's scale carries over between epochs
    history = History()
    if resume is not None:  # the weights, optimizer, scheduler, early stopping, history, random generators
        vars(history).update(restore_training(resume, recipe.model, model, optimizer, scheduler,
                                              early_stopping, train_loader, device, scaler, log))
    last_epoch = history.epochs if history.stopped_early else recipe.epochs  # a finished run has nothing left
    for epoch in range(history.epochs + 1, last_epoch + 1):
        try:
            lr, start = current_lr(optimizer), time.perf_counter()
            train_loss = train_one_epoch(model, train_loader, loss_fn, optimizer, device, precision,
                                         scheduler if recipe.schedule == "onecycle" else None, scaler)
            valid_loss, valid_accuracy = evaluate(model, valid_loader, loss_fn, device)
        except KeyboardInterrupt:  # Ctrl-C, or Colab's stop button
            history.interrupted = True
            log(interrupted_note(epoch, last_path))
            break
        metrics = {"train_loss": train_loss, "valid_loss": valid_loss, "valid_accuracy": valid_accuracy}
        history.record(**metrics, lr=lr, seconds=time.perf_counter() - start)
        log(f"epoch {epoch:3d}/{recipe.epochs}  train loss {train_loss:.4f}  valid loss {valid_loss:.4f}  "
            f"valid acc {valid_accuracy:6.2%}  lr {lr:.0e}  {history.seconds[-1]:5.1f} s"
            f"  (at most {(last_epoch - epoch) * history.seconds[-1] / 60:.0f} min left)")
        if writer is not None:  # step = epoch, so a resumed run continues the same curves
            for tag, value in (("loss/train", train_loss), ("loss/valid", valid_loss),
                               ("accuracy/valid", valid_accuracy), ("learning_rate", lr)):
                writer.add_scalar(tag, value, epoch)
            writer.flush()  # a dashboard open during training shows each epoch as it ends
        if scheduler is not None and recipe.schedule == "plateau":
            scheduler.step(valid_loss)  # ReduceLROnPlateau watches the validation loss
            if current_lr(optimizer) != lr:  # what the original's verbose=True used to print
                log(f"          learning rate reduced: {lr:.0e} -> {current_lr(optimizer):.0e}")
        history.stopped_early = early_stopping is not None and early_stopping.step(valid_loss)
        if valid_accuracy > max(history.valid_accuracy[:-1], default=-1.0):  # better than every earlier epoch
            history.best_epoch = epoch
            if best_path is not None:
                save_checkpoint(best_path, model, recipe=recipe, epoch=epoch, metrics=metrics)
        if last_path is not None:  # after the scheduler and early stopping moved on: all that resume needs
            state = training_state(optimizer, scheduler, early_stopping, history, train_loader, writer, best_path, scaler)
            save_checkpoint(last_path, model, recipe=recipe, epoch=epoch, metrics=metrics, extra={"training_state": state})
        if history.stopped_early:
            log(f"          early stop: {early_stopping.patience} epochs without a better validation loss")
            break
    if writer is not None and history.epochs and not history.interrupted:
        log_run_summary(writer, model, valid_loader, device, history, recipe)  # HParams, confusion matrix
    return history


# ---- Stages 7 and 8 -- Prediction and evaluation -------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor,
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class indices [N] and class probabilities [N, 10] for one image or a batch."""
    model.eval()
    probabilities = torch.softmax(model(as_image_batch(images).to(device)), dim=1).cpu()
    return probabilities.argmax(dim=1), probabilities


@torch.no_grad()
def predict_all(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """True labels and predicted classes for every image of a loader (on the CPU)."""
    model.eval()
    labels, predictions = [], []
    for images, batch_labels in loader:
        predictions.append(model(images.to(device)).argmax(dim=1).cpu())
        labels.append(batch_labels.cpu())  # the fast path's labels live on the device
    return torch.cat(labels), torch.cat(predictions)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Counts [true class, predicted class]."""
    return torch.bincount(labels * num_classes + predictions,
                          minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def most_confused(matrix: torch.Tensor, k: int = 5) -> list[tuple[str, str, int]]:
    """The k most frequent mistakes as (true class, predicted class, count)."""
    counts, indices = matrix.clone().fill_diagonal_(0).flatten().topk(k)
    n = matrix.shape[0]
    return [(CLASSES[i // n], CLASSES[i % n], int(c)) for c, i in zip(counts, indices.tolist()) if c > 0]


# ---- Stage 9 -- Loading a checkpoint back --------------------------------------------------------

def load_checkpoint(path: Path | str, device: torch.device | str = "cpu",
                    expect: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the saved network in eval mode; returns (model, checkpoint metadata)."""
    payload = read_checkpoint(path, device)  # machinery/checkpoint_file.py: readable errors for bad files
    if expect is not None and payload.get("model") != expect:
        raise CheckpointError(f"{path} holds the {payload.get('model')!r} network, not {expect!r}")
    try:
        model = build_model(payload.get("model"))
    except ValueError as e:
        raise CheckpointError(f"{path} holds a network this course does not have: {e}") from None
    model = load_weights(model, payload, path).to(device).eval()
    return model, {k: v for k, v in payload.items() if k not in ("state_dict", "training_state")}


# ---- Stage 10 -- A whole recipe in one call: what stage 6 assembled by hand ----------------------

def make_train_loader(recipe: Recipe, train_set: Dataset, generator: torch.Generator, device: torch.device):
    """Shuffled training batches of the recipe's size: a DataLoader, or the fast path (augmented if asked)."""
    if recipe.fast:
        return DeviceLoader(train_set, recipe.batch_size, True, generator, device, recipe.augment, recipe.erase, channels_last=True)
    return make_loader(train_set, recipe.batch_size, shuffle=True, generator=generator, device=device)


def make_eval_loader(recipe: Recipe, dataset: Dataset, device: torch.device):
    """Batches of 1,000 for validation or testing, on the recipe's path (DataLoader or fast path)."""
    if recipe.fast:
        return DeviceLoader(dataset, 1000, device=device, channels_last=True)
    return make_loader(dataset, 1000, device=device)


def make_training(recipe: Recipe, device: torch.device, steps_per_epoch: int) -> tuple:
    """A fresh network (channels-last on the fast path), its optimizer, scheduler and loss."""
    layout = torch.channels_last if recipe.fast else torch.preserve_format  # channels-last: faster convolutions
    model = build_model(recipe.model).to(device, memory_format=layout)
    if recipe.compile:
        compile_model(model, device)
    optimizer = make_optimizer(model, recipe)
    return (model, optimizer, make_scheduler(optimizer, recipe, steps_per_epoch),
            nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing))


def train_run(recipe: Recipe, train_set: Dataset, valid_set: Dataset, device: torch.device, *,
              run_dir: Path | str, best_path: Path | str | None = None, last_path: Path | str | None = None,
              resume: Path | str | None = None, log=print) -> tuple[nn.Module, History, float]:
    """One seeded run of a recipe, logged to TensorBoard; returns the model, its History and minutes."""
    from torch.utils.tensorboard import SummaryWriter
    generator = seed_everything(recipe.seed)
    train_loader = make_train_loader(recipe, train_set, generator, device)
    model, optimizer, scheduler, loss_fn = make_training(recipe, device, len(train_loader))
    log(f"recipe {recipe.name}: {recipe.model} ({count_parameters(model):,} parameters) on {device}, {len(train_set):,}"
        f" train / {len(valid_set):,} valid images, up to {recipe.epochs} epochs; TensorBoard run {Path(run_dir).name}")
    early_stopping = EarlyStopping(recipe.stop_patience) if recipe.schedule == "plateau" else None  # one-cycle: fixed
    start = time.perf_counter()
    with SummaryWriter(run_dir) as writer:
        history = fit(model, train_loader, make_eval_loader(recipe, valid_set, device), recipe=recipe,
                      loss_fn=loss_fn, optimizer=optimizer, device=device, scheduler=scheduler, writer=writer,
                      early_stopping=early_stopping, best_path=best_path, last_path=last_path, resume=resume, log=log)
    return model, history, (time.perf_counter() - start) / 60


if __name__ == "__main__":  # python helpers.py train | evaluate | bench: the command line is machinery/cli.py
    from machinery.cli import main
    raise SystemExit(main())
