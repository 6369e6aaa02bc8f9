"""Colab: keep checkpoints on Google Drive, and say what training costs on a runtime without a
GPU."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from .basics import CHECKPOINTS, DRIVE_CHECKPOINTS, REFERENCE
from .checkpoint_file import read_checkpoint
from .recipes import Recipe, checkpoint_paths, smoke_sized

T4_HOWTO = "Runtime > Change runtime type > T4 GPU, then Runtime > Run all"


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules


def mount_drive() -> Path:
    """Mount Google Drive at /content/drive (Colab asks for permission once a runtime); return the
    course's checkpoint folder on it."""
    my_drive, mount_point = DRIVE_CHECKPOINTS.parents[1], DRIVE_CHECKPOINTS.parents[2]
    if not my_drive.is_dir():  # not mounted yet (mounting again only prints a notice)
        from google.colab import drive
        drive.mount(str(mount_point))
    return DRIVE_CHECKPOINTS


def checkpoint_folder(keep_on_drive: bool, log=print) -> Path:
    """Where stage 6 saves checkpoints: Google Drive when asked and in Colab (mounted here), else
    checkpoints/."""
    if not keep_on_drive:
        return CHECKPOINTS
    if not in_colab():
        log("not in Colab: the checkpoints stay in checkpoints/, on this machine's disk")
        return CHECKPOINTS
    folder = mount_drive()
    folder.mkdir(parents=True, exist_ok=True)
    log("checkpoints go to My Drive/fashion-mnist-cnn/checkpoints: notebooks 7-9 find them there "
        "when their KEEP_ON_DRIVE is True too")
    return folder


def course_checkpoint(name: str = "original", keep_on_drive: bool = False, log=print) -> Path:
    """Your checkpoint NAME from stage 6 -- on Google Drive when keep_on_drive says stage 6 kept it
    there (mounted here, in Colab), else in checkpoints/ -- otherwise the course's reference.

    NAME is a recipe's best checkpoint ("original") or its last ("original-last"); in smoke mode
    stage 6 writes them as original-smoke.pt and original-smoke-last.pt, and those are yours.
    """
    recipe, last = name.removesuffix("-last"), name.endswith("-last")
    yours = checkpoint_paths(smoke_sized(Recipe(recipe)))[last].name  # as stage 6 names them
    folders = [CHECKPOINTS]
    if keep_on_drive and in_colab():
        folders.insert(0, mount_drive())  # each notebook's runtime starts with Drive unmounted
    elif keep_on_drive:
        log("not in Colab: no Drive to look in, only checkpoints/ on this machine's disk")
    for folder in folders:
        if (folder / yours).is_file():
            return folder / yours
    return REFERENCE / f"{name}.pt"


def runtime_note(device: torch.device, reference: Path = REFERENCE / "original.pt") -> str:
    """One paragraph on where training runs: the GPU's name, or what the course's reference run
    of the same recipe cost."""
    if device.type == "cuda":
        return f"training on the GPU: {torch.cuda.get_device_name(device)}"
    made = read_checkpoint(reference).get("reference", {})
    if "training_minutes" in made:
        cost = (f"the course's reference run of this recipe took "
                f"{round(made['training_minutes'])} min on {made.get('machine')}")
        if made.get("runs_sharing", 1) > 1:  # its time is not what a run alone costs
            cost += f", as one of {made['runs_sharing']} runs sharing that machine"
    else:  # no recorded time
        cost = "a full run takes about an hour on a CPU"
    if in_colab():
        return (f"This Colab runtime has no GPU: {cost}. A GPU runtime trains faster: {T4_HOWTO}. "
                "Or carry on here: the progress bar shows the time left in each epoch.")
    return (f"training on the CPU ({device}): {cost}; "
            "the progress bar shows the time left in each epoch.")
