"""The course's runner: a whole recipe in one call, for notebook 10 and the command line.

Its epoch loop (run_epochs) is a second loop beside helpers.fit, not a copy of it: it calls
helpers' own train_one_epoch and evaluate (notebook 6's code) and adds what long and fast runs
need, each as a small wrapper around them:
- resume: a last checkpoint after every epoch holds everything the loop keeps (machinery/resume);
- the fast path: data on the device, weights in channels-last layout (machinery/fast_path);
- mixed precision: MixedPrecision wraps the network, ScaledOptimizer the optimizer (fp16 only);
- one-cycle: the schedule steps after every optimizer step, through the optimizer's own hook;
- flip test-time augmentation: FlipTTA wraps the network for evaluation;
- TensorBoard: every tab of the dashboard filled by one run (machinery/tensorboard_panels).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

import helpers
from helpers import EarlyStopping, History, current_lr
from .basics import CourseError
from .checkpoint_file import read_checkpoint
from .fast_path import DeviceLoader, compile_model, make_scaler, mixed_precision
from .recipes import Recipe
from .resume import interrupted_note, restore_training, training_state
from .tensorboard_panels import log_histograms, log_run_summary, log_start


def recipe_datasets(recipe: Recipe, root: Path | str) -> tuple[Dataset, Dataset, Dataset]:
    """helpers.load_datasets, and for a final fit the validation images in the training set too."""
    train, valid, test = helpers.load_datasets(replace(recipe, train_size=None, valid_size=None),
                                               root)
    if recipe.final_fit:  # the recipe is chosen: learn from the validation images too
        train = Subset(train.dataset, [*train.indices, *valid.indices])
    return helpers.first(train, recipe.train_size), helpers.first(valid, recipe.valid_size), test


def make_train_loader(recipe: Recipe, train_set: Dataset, generator: torch.Generator,
                      device: torch.device):
    """Shuffled training batches of the recipe's size: a DataLoader, or the fast path."""
    if recipe.fast:
        return DeviceLoader(train_set, recipe.batch_size, True, generator, device,
                            augment=recipe.augment, shift=recipe.shift,
                            erase=recipe.erase)
    return helpers.make_loader(train_set, recipe.batch_size, shuffle=True, generator=generator,
                               device=device)


def make_eval_loader(recipe: Recipe, dataset: Dataset, device: torch.device):
    """Batches of 1,000 for validation or testing, on the recipe's path (never augmented)."""
    if recipe.fast:
        return DeviceLoader(dataset, 1000, device=device)
    return helpers.make_loader(dataset, 1000, device=device)


def make_schedule(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    """The recipe's learning-rate schedule: stage 5's plateau schedule, or one-cycle.

    One-cycle rises to recipe.lr and falls to almost zero over the whole run, one step per
    batch, and moves Adam's beta1 the other way (0.95 down to 0.85 at the peak, then back): the
    optimizer's post-step hook steps it, so helpers.train_one_epoch needs no change.
    """
    if recipe.schedule == "plateau":
        return helpers.make_scheduler(optimizer, recipe)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=steps_per_epoch)
    optimizer.register_step_post_hook(lambda *_: schedule.step())
    return schedule


class MixedPrecision(nn.Module):
    """The network's forward pass under autocast (bf16 or fp16 on a GPU, bf16 on a CPU with AMX
    where the recipe asks), logits back in fp32.

    With fp16's gradient scaler, the gradient flowing back from the logits is multiplied by the
    scale: the same as scaler.scale(loss).backward(), since backward is linear.
    """

    def __init__(self, model: nn.Module, precision: torch.dtype | None,
                 scaler: torch.amp.GradScaler | None = None) -> None:
        super().__init__()
        self.model, self.precision, self.scaler = model, precision, scaler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.precision is not None
        with torch.autocast(x.device.type, dtype=self.precision, enabled=mixed):
            logits = self.model(x).float()
        if self.scaler is not None and self.scaler.is_enabled() and logits.requires_grad:
            logits.register_hook(self.scaler.scale)
        return logits


class ScaledOptimizer:
    """An optimizer stepped through fp16's gradient scaler: unscale the gradients, skip a step
    whose gradients overflowed, then adjust the scale (torch.amp.GradScaler does all three)."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        self.optimizer, self.scaler = optimizer, scaler

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()


class FlipTTA(nn.Module):
    """Flip test-time augmentation: the mean of the logits of each image and of its mirror."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # clone: a network compiled with CUDA graphs (--compile on a GPU) writes each call's
        # output into the same memory, so the second call would overwrite the first
        return (self.model(x).clone() + self.model(x.flip(3))) / 2


def training_precision(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The recipe's autocast type on this device: the fast path's mixed precision, else none."""
    return mixed_precision(device, recipe.cpu_bf16) if recipe.fast else None


def evaluated(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    """The network as the recipe evaluates it: with flip test-time augmentation if it asks, and
    in bf16 where it trains in bf16 on a CPU (cpu_bf16); in fp32 everywhere else, GPUs included
    (though cuDNN's default TF32 convolutions on an A100, H100 or newer move the last digits)."""
    precision = training_precision(recipe, device) if device.type == "cpu" else None
    if precision is not None:
        model = MixedPrecision(model, precision)
    return FlipTTA(model) if recipe.flip_tta else model


def with_precision(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                   precision: torch.dtype | None) -> tuple:
    """The network and optimizer to train with in `precision`: wrapped for autocast, and for
    fp16 stepped through a gradient scaler (one per run: its scale carries over)."""
    scaler = make_scaler(device, precision)
    if precision is not None:
        model = MixedPrecision(model, precision, scaler)
    return model, ScaledOptimizer(optimizer, scaler) if scaler.is_enabled() else optimizer


def make_training(recipe: Recipe, device: torch.device, steps_per_epoch: int) -> tuple:
    """A fresh network (channels-last on the fast path), its optimizer, schedule and loss."""
    layout = torch.channels_last if recipe.fast else torch.preserve_format  # faster convolutions
    model = helpers.build_model(recipe.network).to(device, memory_format=layout)
    if recipe.compile:
        compile_model(model, device)
    optimizer = helpers.make_optimizer(model, recipe)
    return (model, optimizer, make_schedule(optimizer, recipe, steps_per_epoch),
            nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing))


def run_epochs(model: nn.Module, train_loader, valid_loader, recipe: Recipe,
               optimizer: torch.optim.Optimizer, schedule, loss_fn: nn.Module,
               device: torch.device, *, writer=None, best_path: Path | str | None = None,
               last_path: Path | str | None = None, resume: Path | str | None = None,
               log=print) -> History:
    """helpers.fit's loop for a recipe, with resume, mixed precision, one-cycle, a clean Ctrl-C,
    a last checkpoint after every epoch, and TensorBoard's panels (machinery/tensorboard_panels)."""
    precision = training_precision(recipe, device)  # bf16 or fp16 on a GPU; bf16 on AMX if asked
    trained, stepper = with_precision(model, optimizer, device, precision)
    scaler = stepper.scaler if isinstance(stepper, ScaledOptimizer) else None  # saved for resume
    history = History()
    plateau = recipe.schedule == "plateau"
    early_stopping = EarlyStopping(recipe.stop_patience) if plateau else None  # one-cycle: fixed
    if resume is not None:  # weights, optimizer, schedule, early stopping, history, generators
        vars(history).update(restore_training(resume, recipe.network, model, optimizer, schedule,
                                              early_stopping, train_loader, device, scaler, log))
        check_one_cycle_length(resume, schedule, recipe.epochs, len(train_loader))
    if writer is not None and not history.epochs:  # a resumed run has them already
        log_start(writer, recipe.network, valid_loader, device)
    last_epoch = history.epochs if history.stopped_early else recipe.epochs
    for epoch in range(history.epochs + 1, last_epoch + 1):
        try:
            lr, start = current_lr(optimizer), time.perf_counter()
            train_loss = helpers.train_one_epoch(trained, train_loader, loss_fn, stepper, device)
            valid_loss, valid_accuracy = helpers.evaluate(evaluated(model, recipe, device),
                                                          valid_loader, loss_fn, device)
        except KeyboardInterrupt:  # Ctrl-C, or Colab's stop button
            history.interrupted = True
            log(interrupted_note(epoch, last_path))
            break
        metrics = {"train_loss": train_loss, "valid_loss": valid_loss,
                   "valid_accuracy": valid_accuracy}
        history.record(**metrics, lr=lr, seconds=time.perf_counter() - start)
        log(f"epoch {epoch:3d}/{recipe.epochs}  train loss {train_loss:.4f}  valid loss "
            f"{valid_loss:.4f}  valid acc {valid_accuracy:6.2%}  lr {lr:.0e}  "
            f"{history.seconds[-1]:5.1f} s  (~{(last_epoch - epoch) * history.seconds[-1] / 60:.0f}"
            f" min left)")
        if writer is not None:
            log_epoch(writer, model, epoch, metrics, lr)
        if plateau:
            schedule.step(valid_loss)
            if current_lr(optimizer) != lr:
                log(f"          learning rate reduced: {lr:.0e} -> {current_lr(optimizer):.0e}")
        history.stopped_early = plateau and early_stopping.step(valid_loss)
        if valid_accuracy > max(history.valid_accuracy[:-1], default=-1.0):
            history.best_epoch = epoch
            if best_path is not None:
                save(best_path, model, recipe, epoch, metrics)
        if last_path is not None:  # after the schedule and early stopping moved on
            state = training_state(optimizer, schedule, early_stopping, history, train_loader,
                                   writer, best_path, scaler)
            save(last_path, model, recipe, epoch, metrics, training_state=state)
        if history.stopped_early:
            log(f"          early stop: {recipe.stop_patience} epochs without a better "
                f"validation loss")
            break
    if writer is not None and history.epochs and not history.interrupted:
        best = best_path is not None and Path(best_path).is_file()  # else: the last epoch's
        log_run_summary(writer, model, valid_loader, device, history, recipe,
                        read_checkpoint(best_path, device)["state_dict"] if best else None)
    return history


def check_one_cycle_length(resume: Path | str, schedule, epochs: int, steps_per_epoch: int) -> None:
    """A resumed one-cycle run keeps its length: its schedule was built for that many epochs."""
    planned = getattr(schedule, "total_steps", None)  # None: the plateau schedule
    if planned is not None and planned != epochs * steps_per_epoch:
        raise CourseError(f"{resume} is a one-cycle run of {planned // steps_per_epoch} "
                          f"epochs: its schedule ends there and cannot be stretched to "
                          f"{epochs}; train a new run with more epochs instead")


def log_epoch(writer, model: nn.Module, epoch: int, metrics: dict, lr: float) -> None:
    """The epoch's curves and histograms; step = epoch, so a resumed run continues the curves."""
    values = {"loss/train": metrics["train_loss"], "loss/valid": metrics["valid_loss"],
              "accuracy/valid": metrics["valid_accuracy"], "learning_rate": lr}
    for tag, value in values.items():
        writer.add_scalar(tag, value, epoch)
    log_histograms(writer, model, epoch)
    writer.flush()


def save(path: Path | str, model: nn.Module, recipe: Recipe, epoch: int, metrics: dict,
         **extra) -> Path:
    """helpers.save_checkpoint with the recipe recorded, so a run can be resumed or repeated."""
    return helpers.save_checkpoint(path, model, recipe=recipe.name, settings=recipe.as_dict(),
                                   epoch=epoch, metrics=metrics, **extra)


def train_run(recipe: Recipe, train_set: Dataset, valid_set: Dataset, device: torch.device, *,
              run_dir: Path | str | None, best_path: Path | str | None = None,
              last_path: Path | str | None = None, resume: Path | str | None = None,
              log=print) -> tuple[nn.Module, History, float]:
    """One seeded run of a recipe, logged to TensorBoard in run_dir (None: a quick experiment,
    not logged); returns the model, History, minutes."""
    from torch.utils.tensorboard import SummaryWriter
    generator = helpers.seed_everything(recipe.seed)
    train_loader = make_train_loader(recipe, train_set, generator, device)
    model, optimizer, schedule, loss_fn = make_training(recipe, device, len(train_loader))
    logged = "no TensorBoard run" if run_dir is None else f"TensorBoard run {Path(run_dir).name}"
    log(f"recipe {recipe.name}: {recipe.network} ({helpers.count_parameters(model):,} parameters) "
        f"on {device}, {len(train_set):,} train / {len(valid_set):,} valid images, up to "
        f"{recipe.epochs} epochs; {logged}")
    start = time.perf_counter()
    with SummaryWriter(run_dir) if run_dir is not None else nullcontext() as writer:
        history = run_epochs(model, train_loader, make_eval_loader(recipe, valid_set, device),
                             recipe, optimizer, schedule, loss_fn, device, writer=writer,
                             best_path=best_path, last_path=last_path, resume=resume, log=log)
    return model, history, (time.perf_counter() - start) / 60
