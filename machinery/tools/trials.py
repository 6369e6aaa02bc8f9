"""Choosing and shipping recipes: `trial` trains a variant and reports validation figures only;
`reference` ships a trained checkpoint to reference/ with its test figures and how it was made."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

import helpers
from .. import engine
from ..basics import CHECKPOINTS, REFERENCE, REPO_ROOT, RUNS_ROOT
from ..recipes import RECIPES, Recipe, checkpoint_paths
from ..runs import evaluate_checkpoints


def make_reference(checkpoint: Path, command: str, minutes: float, name: str | None = None,
                   sharing: int = 1) -> Path:
    """Copy a trained checkpoint to reference/NAME.pt (NAME: the recipe's; the network's for a
    checkpoint older than recipe names) with its test figures and how it was made (`sharing`: how
    many training runs shared the machine, this one included); the training state of a last
    checkpoint is left out. A study's candidate that RECIPES adopted as NAME, setting for setting,
    is recorded under that name."""
    device = torch.device("cpu")
    model, meta = helpers.load_checkpoint(checkpoint, device)
    # the figures `python helpers.py evaluate` prints for it (with flip TTA if its recipe has it)
    figures = next(evaluate_checkpoints([checkpoint], device, helpers.DATA_ROOT))
    test_loss, test_accuracy = figures["test_loss"], figures["test_accuracy"]
    settings = meta.get("settings") or {}
    reference = {"test_accuracy": test_accuracy, "test_loss": test_loss, "command": command,
                 # the machine that trained it, as its checkpoint recorded; older checkpoints:
                 # this one
                 "machine": meta.get("machine") or helpers.machine(),
                 "training_minutes": round(minutes, 1), "runs_sharing": sharing}
    path = REFERENCE / f"{name or meta.get('recipe') or meta['model']}.pt"
    kept = {k: meta.get(k) for k in ("recipe", "settings", "epoch", "metrics")}
    # the torch that trained it (older checkpoints recorded none: this one's)
    kept["torch_version"] = meta.get("torch_version") or str(torch.__version__)
    adopted = {**settings, "name": name}
    if name in RECIPES and settings and Recipe.from_dict(adopted) == RECIPES[name]:
        kept.update(recipe=name, settings=adopted)
    helpers.save_checkpoint(path, model, **kept, reference=reference, machine=reference["machine"])
    print(f"wrote {path.relative_to(REPO_ROOT)}: test accuracy {test_accuracy:.2%}, "
          f"loss {test_loss:.4f}")
    return path


def parse_overrides(pairs: list[str]) -> dict:
    """Settings changes written KEY=VALUE: values read as JSON (25, 0.1, true), otherwise as text
    (adamw)."""
    known = [f.name for f in dataclasses.fields(Recipe) if f.name != "name"]
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(f"{pair!r} is not KEY=VALUE with KEY one of the settings: "
                             f"{', '.join(known)}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def trial(recipe: str, overrides: dict, smoke: bool | None = None, out: Path | None = None) -> dict:
    """Train a recipe with some settings changed; report validation figures only.

    This is how the course's recipes were chosen: the test set is never evaluated here, so a
    choice made from these figures cannot overfit it. The run's TensorBoard log goes to
    runs/trial-..., its best and last checkpoints to checkpoints/trial-... (resumable with
    `python helpers.py train --resume`; shippable with `reference` once RECIPES adopts it);
    out=DIR puts both under DIR instead.
    """
    if overrides.get("final_fit"):
        raise ValueError("a trial is judged on the validation images, and a final fit trains on "
                         "them: choose the recipe with trials, then train it with "
                         "python helpers.py train --final-fit")
    name = "-".join(["trial", recipe, *(f"{key}{value}" for key, value in overrides.items())])
    variant = dataclasses.replace(helpers.course_recipe(smoke=smoke, name=recipe, **overrides),
                                  name=name)
    best_path, last_path = checkpoint_paths(variant, out or CHECKPOINTS, name)  # smoke: -smoke
    train_set, valid_set, _ = engine.recipe_datasets(variant, helpers.DATA_ROOT)
    _, history, minutes = engine.train_run(variant, train_set, valid_set, helpers.pick_device(),
                                           run_dir=((out / "runs" if out else RUNS_ROOT)
                                                    / best_path.stem),
                                           best_path=best_path, last_path=last_path)
    return {"recipe": recipe, "overrides": overrides, "epochs": history.epochs,
            "valid_accuracy_last": history.valid_accuracy[-1],
            "valid_accuracy_best": max(history.valid_accuracy),
            "minutes": round(minutes, 1), "last_checkpoint": str(last_path),
            "machine": helpers.machine()}



def flip_count(checkpoint: Path, valid_set, device: torch.device) -> dict:
    """Flip test-time augmentation against none for a trained network, on the validation images
    alone: each version's accuracy, the images the flip fixes and breaks, and the sign test.
    The rule notebook 10 applies: keep the flip only if it fixes more than it breaks, p < 0.05."""
    model, meta = helpers.load_checkpoint(checkpoint, device)
    recipe = (helpers.Recipe.from_dict(meta["settings"]) if meta.get("settings")
              else helpers.course_recipe(smoke=False))  # an older checkpoint: the plain loader
    loader = engine.make_eval_loader(recipe, valid_set, device)
    right = {}
    for name, flip in (("none", False), ("flip", True)):  # evaluated as its recipe evaluates
        network = engine.evaluated(model, dataclasses.replace(recipe, flip_tta=flip), device)
        labels, predictions = helpers.predict_all(network, loader, device)
        right[name] = predictions == labels
    fixed = int((right["flip"] & ~right["none"]).sum())
    broken = int((right["none"] & ~right["flip"]).sum())
    p = helpers.sign_test(fixed, broken)
    return {"checkpoint": str(checkpoint), "valid_images": len(valid_set),
            "valid_accuracy": float(right["none"].float().mean()),
            "valid_accuracy_flip": float(right["flip"].float().mean()),
            "fixed": fixed, "broken": broken, "p": p, "keep_flip": fixed > broken and p < 0.05,
            "machine": helpers.machine()}
