"""Recipes: one named, validated set of hyper-parameters carried through a run.

A recipe's name is recorded in its checkpoints and in its TensorBoard run's name. Adding a recipe
is one entry in RECIPES; adding a network is one entry in helpers.NETWORKS, and a recipe names it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .basics import CHECKPOINTS, smoke_mode


@dataclass(frozen=True)
class Recipe:
    """The hyper-parameters of one training run, under a name; the defaults are the original
    notebook's."""
    name: str
    network: str = "original"       # a network of helpers.NETWORKS (build_model checks the name)
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_factor: float = 0.1          # ReduceLROnPlateau multiplies the lr by this when ...
    lr_patience: int = 4            # ... more than this many epochs in a row bring no better loss
    stop_patience: int = 7          # early stopping: stop when this many epochs in a row bring none
    seed: int = 0
    train_size: int | None = None   # None: all 50,000 training images
    valid_size: int | None = None   # None: all 10,000 validation images
    test_size: int | None = None    # None: all 10,000 test images
    fast: bool = False              # the fast path: data on the device, channels-last, mixed
                                    # precision
    optimizer: str = "adam"         # "adam" (L2 weight decay, as the original) or "adamw"
                                    # (decoupled)
    schedule: str = "plateau"       # "plateau" (ReduceLROnPlateau) or "onecycle" (up, then down,
                                    # per step; Adam's beta1 the other way)
    augment: bool = False           # random shifts and mirror images (fast path only)
    shift: int = 2                  # augment: shift by up to this many pixels (0: mirror only)
    erase: float = 0.0              # augment: erase a random box in this share of the images
    flip_tta: bool = False          # evaluate each image and its mirror (engine.FlipTTA)
    cpu_bf16: bool = False          # fast path on a CPU with AMX units: train and evaluate in
                                    # bf16 (fast_path.mixed_precision)
    label_smoothing: float = 0.0    # CrossEntropyLoss(label_smoothing=...): softer targets
    compile: bool = False           # torch.compile the network (CUDA graphs on a GPU):
                                    # fast_path.compile_model
    final_fit: bool = False         # train on all 60,000 images (train + validation): the last
                                    # step, once validation has chosen the recipe; its "valid"
                                    # figures are then not held out

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr_patience", "stop_patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be zero or positive, got {self.weight_decay!r}")
        for name, allowed in (("optimizer", ("adam", "adamw")),
                              ("schedule", ("plateau", "onecycle"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: "
                                 f"choose {' or '.join(allowed)}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in 0..1, got {self.label_smoothing!r}")
        if self.final_fit and self.schedule != "onecycle":
            raise ValueError("final_fit needs a fixed-length schedule (onecycle): the plateau "
                             "schedule and early stopping watch the validation loss, and a final "
                             "fit has no held-out validation")
        if not isinstance(self.shift, int) or self.shift < 0:
            raise ValueError(f"shift must be a whole number of pixels, 0 or more, "
                             f"got {self.shift!r}")
        if not 0 <= self.erase <= 1:
            raise ValueError(f"erase is a share of the images, 0 to 1, got {self.erase!r}")
        if self.erase and not self.augment:
            raise ValueError("erase needs augment=True: random erasing is an augmentation")
        if self.cpu_bf16 and not self.fast:
            raise ValueError("cpu_bf16=True needs the fast path (fast=True): mixed precision is "
                             "the fast path's")
        if self.augment and not self.fast:
            raise ValueError("augment=True needs the fast path (fast=True): "
                             "augmentation runs on the device")

    def as_dict(self) -> dict:
        """The recipe as plain values, as checkpoints record it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> Recipe:
        """A recipe recorded in a checkpoint; checkpoints from before recipes had names get
        'unnamed'."""
        saved = dict(saved)
        if "model" in saved:  # the network's name, as checkpoints before 2026-12-05 call it
            saved["network"] = saved.pop("model")
        return cls(**{"name": "unnamed", **saved})


# The course's recipes: stages 5-6 teach the original; stage 10 climbs to two more; stage 11
# sprints.
RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    # the original notebook: batch 16, Adam 1e-3, ReduceLROnPlateau, early stopping
    Recipe("original"),
    Recipe("original-fast", fast=True, batch_size=128, epochs=25, lr=3e-3, schedule="onecycle"),
    Recipe("improved", network="improved", fast=True, batch_size=256, epochs=24, lr=4e-3,
           optimizer="adamw", weight_decay=0.05, schedule="onecycle", augment=True,
           label_smoothing=0.1),
    # a sprint on two CPU cores (notebook 11): of the recipes tried, the quickest whose 3-seed
    # mean validation accuracy reached 93.5% (README, "The sprint")
    Recipe("sprint", network="sprint", fast=True, batch_size=128, epochs=5, lr=3e-3,
           optimizer="adamw", weight_decay=5e-4, schedule="onecycle", augment=True, shift=0,
           label_smoothing=0.1, flip_tta=True, cpu_bf16=True),
    # the most accurate with at most 300K parameters: the improved recipe 2.5 times as long, with
    # random erasing chosen on validation by `python -m machinery.tools study`; its 60 epochs and
    # flip TTA were set by hand (README, "The accuracy recipe")
    Recipe("accurate", network="improved", fast=True, batch_size=256, epochs=60, lr=4e-3,
           optimizer="adamw", weight_decay=0.05, schedule="onecycle", augment=True, erase=0.5,
           label_smoothing=0.1, flip_tta=True),
)}


# Smoke mode (the tests, CI): every code path of a run, on this many training, validation and test
# images, for two epochs -- enough for every line to run, small enough for the suite's budget
# (halving the 2,000 / 500 / 500 of before took the suite from 360 to about 300 s on a 2-core
# EPYC).
SMOKE_SIZES = {"train_size": 1000, "valid_size": 250, "test_size": 250}


def smoke_sized(recipe: Recipe, smoke: bool | None = None) -> Recipe:
    """The recipe; in smoke mode (smoke=None: as FMNIST_SMOKE says) SMOKE_SIZES images and two
    epochs."""
    if smoke_mode() if smoke is None else smoke:
        recipe = replace(recipe, epochs=2, **SMOKE_SIZES)
    return recipe


def course_recipe(name: str = "original", smoke: bool | None = None, **changes) -> Recipe:
    """A course recipe by name (see RECIPES), with `changes`; in smoke mode SMOKE_SIZES images
    and two epochs."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return replace(smoke_sized(RECIPES[name], smoke), **changes)


# Stage 10 as a controlled experiment: from original-fast to improved, one idea per rung. Each rung
# is (name, what it changes, changes), applied with dataclasses.replace on top of the rung before,
# so a rung differs from the one before in its `changes` only; the last rung is RECIPES["improved"]
# but for its name (tests/test_ladder.py checks both).
LADDER: list[tuple[str, str, dict]] = [
    ("fast-path", "the fast path: original-fast itself, the ladder's base (no change)", {}),
    ("improved-network", "the improved network (a small ResNet), nothing else",
     {"network": "improved"}),
    ("adamw", "decoupled weight decay: AdamW with weight decay 0.05",
     {"optimizer": "adamw", "weight_decay": 0.05}),
    ("augment", "augmentation: random 2-pixel shifts and mirror images", {"augment": True}),
    ("label-smoothing", "label smoothing 0.1", {"label_smoothing": 0.1}),
    ("batch-lr-length", "the improved recipe's batch size, learning rate and length: batch 256, "
     "one-cycle to 4e-3, 24 epochs", {"batch_size": 256, "lr": 4e-3, "epochs": 24}),
]


def ladder_recipes(smoke: bool | None = None) -> list[Recipe]:
    """The ladder's rungs as recipes named ladder-I-NAME, from RECIPES["original-fast"]; smoke mode
    shrinks each."""
    rungs, recipe = [], RECIPES["original-fast"]
    for i, (name, _, changes) in enumerate(LADDER):
        recipe = replace(recipe, name=f"ladder-{i}-{name}", **changes)
        rungs.append(smoke_sized(recipe, smoke))
    return rungs


def recipe_for_network(network: str, fast: bool = False) -> str:
    """The name of the course recipe that trains `network` (on the fast path if asked)."""
    names = [r.name for r in RECIPES.values() if r.network == network and (r.fast or not fast)]
    names.sort(key=lambda name: RECIPES[name].fast != fast)  # an exact match on the path first
    if not names:
        trained = sorted({r.network for r in RECIPES.values()})
        raise ValueError(f"no recipe trains the network {network!r}"
                         f"{' on the fast path' if fast else ''}: "
                         f"networks with a recipe: {', '.join(trained)} "
                         f"(add one to machinery.recipes.RECIPES)")
    return names[0]


def variant_suffix(recipe: Recipe) -> str:
    """'-final' for a final fit, '-smoke' for a smoke run: kept apart from a real run's files."""
    # smoke mode cuts the validation set too; a trial that only shrinks the training set
    # (`trial ... train_size=2000`) is a real experiment, named by its setting
    smoke = recipe.train_size is not None and recipe.valid_size is not None
    return ("-final" if recipe.final_fit else "") + ("-smoke" if smoke else "")


def checkpoint_paths(recipe: Recipe, folder: Path | str = CHECKPOINTS,
                     name: str | None = None) -> tuple[Path, Path]:
    """Where a run keeps its best and last checkpoints: checkpoints/RECIPE.pt and RECIPE-last.pt.

    The name is the recipe's unless given. Smoke runs get their own names, so a CI run never
    overwrites a real run's checkpoints.
    """
    stem = (name or recipe.name) + variant_suffix(recipe)
    return Path(folder) / f"{stem}.pt", Path(folder) / f"{stem}-last.pt"


def run_name(recipe: Recipe) -> str:
    """A readable TensorBoard run name: recipe, batch size, learning rate and start time."""
    return (f"{recipe.name}-b{recipe.batch_size}-lr{recipe.lr:g}{variant_suffix(recipe)}-"
            f"{time.strftime('%Y%m%d-%H%M%S')}")
