"""The command line's jobs: a recipe trained end to end and reported on the test set, as
`python helpers.py train` runs it, and checkpoints evaluated, as `python helpers.py evaluate`."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

import helpers
from . import engine
from .basics import CheckpointError, RUNS_ROOT
from .checkpoint_file import read_checkpoint
from .fast_path import DeviceLoader
from .recipes import Recipe, checkpoint_paths, course_recipe, recipe_for_network, run_name


def choose_recipe(network: str | None = None, recipe: str | None = None, fast: bool = False,
                  smoke: bool = False, **overrides) -> Recipe:
    """The recipe a `train` command asks for: by name, or the course recipe for `network`.

    The network asked for is the network trained: a recipe that names another one is refused.
    """
    if network is not None:
        helpers.build_model(network)  # the one check of network names: an unknown one fails here
    chosen = course_recipe(smoke=smoke or None,
                             name=recipe or recipe_for_network(network or "original", fast),
                             **overrides)
    if network is not None and chosen.network != network:
        raise ValueError(f"recipe {chosen.name!r} trains the {chosen.network!r} network, "
                         f"not {network!r}")
    return chosen


def checkpoint_recipe(path: Path, meta: dict) -> Recipe | None:
    """The recipe a checkpoint recorded (None if it recorded none), or a CheckpointError that
    names the file."""
    if not meta.get("settings"):
        return None
    try:
        return Recipe.from_dict(meta["settings"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its recorded recipe cannot be read ({error}); it was "
                              f"saved by another version of the course") from error


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; last_path holds its last finished epoch (None: no epoch finished)."""

    def __init__(self, last_path: Path | str | None) -> None:
        super().__init__()
        self.last_path = last_path


RESUME_CHANGES = ("epochs", "compile")  # what a resumed run may change: train longer, compile


def resumed_recipe(last_checkpoint: Path | str, **overrides) -> tuple[Recipe, dict]:
    """The recipe and training state of an interrupted run; only epochs and compile may change
    (its files stay where the run recorded them, or the defaults where it recorded none)."""
    fixed = [name for name, value in overrides.items() if value and name not in RESUME_CHANGES]
    if fixed:  # refused, not dropped: the run would silently go on with its own settings
        raise ValueError(f"a resumed run keeps its recipe and files: {', '.join(fixed)} cannot "
                         f"change (only {' and '.join(RESUME_CHANGES)} may)")
    saved = read_checkpoint(last_checkpoint)
    state, recipe = saved.get("training_state"), checkpoint_recipe(last_checkpoint, saved)
    if state is None or recipe is None:
        raise CheckpointError(f"{last_checkpoint} is not the last checkpoint of a run: "
                              f"nothing to resume")
    allowed = {k: v for k, v in overrides.items() if k in RESUME_CHANGES and v}
    return replace(recipe, **allowed), state


def train(recipe: Recipe, device: torch.device, *, data: Path | str, runs: Path | str = RUNS_ROOT,
          out: Path | str | None = None, resume: Path | str | None = None,
          state: dict | None = None, log=print) -> dict:
    """Train a recipe end to end, keep its best and last checkpoints, and report test accuracy."""
    train_set, valid_set, test_set = engine.recipe_datasets(recipe, data)
    best_path, last_path = checkpoint_paths(recipe)
    if out:
        best_path = Path(out)
        last_path = best_path.with_name(f"{best_path.stem}-last{best_path.suffix}")
    run_dir = Path(runs) / run_name(recipe)
    if resume:  # carry on in the same files and the same TensorBoard run
        last_path = Path(resume)
        best_path = Path(state["best_path"]) if state["best_path"] else best_path
        run_dir = Path(state["run_dir"]) if state["run_dir"] else run_dir
    if recipe.final_fit:  # no held-out validation to choose a best epoch by: keep the last one only
        best_path = None
        log("final fit: the validation images are in the training set, so the validation figures "
            "below are not an estimate of test accuracy")
    model, history, minutes = engine.train_run(recipe, train_set, valid_set, device,
                                               run_dir=run_dir, best_path=best_path,
                                               last_path=last_path, resume=resume, log=log)
    if history.interrupted:  # the command line names the checkpoint to carry on from
        raise RunInterrupted(last_path if history.epochs else None)
    test_loader = engine.make_eval_loader(recipe, test_set, device)
    loss_fn = nn.CrossEntropyLoss()  # test loss without label smoothing, comparable across recipes
    report = {"epochs": history.epochs, "minutes": minutes, "stopped_early": history.stopped_early,
              "test_images": len(test_set), "train_images": len(train_set),
              "last": (*helpers.evaluate(engine.evaluated(model, recipe, device), test_loader,
                                         loss_fn, device), str(last_path))}
    if best_path is not None:
        best_model, _ = helpers.load_checkpoint(best_path, device)
        report["best"] = (*helpers.evaluate(engine.evaluated(best_model, recipe, device),
                                            test_loader, loss_fn, device), str(best_path))
        report["best_epoch"] = history.best_epoch
    return report


def evaluate_checkpoints(paths: list[Path], device: torch.device, data: Path | str):
    """Each checkpoint's figures on the full 10,000-image test set, one dict per checkpoint."""
    models = [(path, *helpers.load_checkpoint(path, device)) for path in paths]  # all readable?
    recipes = [checkpoint_recipe(path, meta) for path, _, meta in models]
    _, _, test_set = helpers.load_datasets(course_recipe(smoke=False), root=data)
    # the fast path: the same images as a DataLoader's, kept on the device; on a CPU in batches
    # of 64, which evaluated the reference networks 1.4-1.8 times as fast as batches of 1,000
    # (2-core AMD EPYC, 2026-12-06), with the same figures
    test_loader = DeviceLoader(test_set, 64 if device.type == "cpu" else 1000, device=device)
    for (path, model, meta), recipe in zip(models, recipes):
        model = model.to(memory_format=torch.channels_last)
        # as its recipe evaluates: flip TTA, and bf16 for the sprint on an AMX CPU
        evaluated = engine.evaluated(model, recipe, device) if recipe else model
        flip_tta = isinstance(evaluated, engine.FlipTTA)
        start = time.perf_counter()
        test_loss, test_accuracy = helpers.evaluate(evaluated, test_loader, nn.CrossEntropyLoss(),
                                                    device)
        yield {"checkpoint": str(path), "model": meta["model"], "recipe": meta.get("recipe"),
               "params": helpers.count_parameters(model), "test_accuracy": test_accuracy,
               "test_loss": test_loss, "flip_tta": flip_tta,
               "test_images": len(test_set), "epoch": meta.get("epoch"), "device": str(device),
               "seconds": round(time.perf_counter() - start, 2)}
