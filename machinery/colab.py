"""Colab: keep checkpoints on Google Drive, and say what training costs on a runtime without a
GPU."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from .basics import CHECKPOINTS, DRIVE_CHECKPOINTS, REFERENCE
from .checkpoint_file import read_checkpoint

T4_HOWTO = "Runtime > Change runtime type > T4 GPU, then Runtime > Run all"


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules


def checkpoint_folder(keep_on_drive: bool, log=print) -> Path:
    """Where stage 6 saves checkpoints: Google Drive when asked and in Colab (mounted here), else
    checkpoints/."""
    if not keep_on_drive:
        return CHECKPOINTS
    if not in_colab():
        log("not in Colab: the checkpoints stay in checkpoints/, on this machine's disk")
        return CHECKPOINTS
    from google.colab import drive
    drive.mount(str(DRIVE_CHECKPOINTS.parents[2]))  # /content/drive: Colab asks for permission once
    DRIVE_CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    log("checkpoints go to My Drive/fashion-mnist-cnn/checkpoints: notebooks 7-9 find them there")
    return DRIVE_CHECKPOINTS


def runtime_note(device: torch.device, *references: Path) -> str:
    """One paragraph on where training runs: the GPU's name, or what the reference runs of the
    same recipes cost."""
    if device.type == "cuda":
        return f"training on the GPU: {torch.cuda.get_device_name(device)}"
    made = [read_checkpoint(path).get("reference", {})
            for path in references or (REFERENCE / "original.pt",)]
    machines = {run.get("machine") for run in made}
    if all("training_minutes" in run for run in made) and len(machines) == 1:
        # whole minutes that add up as printed
        minutes = [round(run["training_minutes"]) for run in made]
        cost = (f"the course's reference run of this recipe took {minutes[0]} min"
                if len(made) == 1 else
                f"the course's reference runs of the {len(made)} trainings here took "
                f"{' + '.join(map(str, minutes))} = {sum(minutes)} min")
        cost += f" on {machines.pop()}"
    else:  # no recorded time, or times from different machines: nothing to add up
        cost = "a full run takes about an hour on a CPU"
    if in_colab():
        return (f"This Colab runtime has no GPU: {cost}. For a few minutes instead: {T4_HOWTO}. "
                "Or carry on here: the progress bar shows the time left in each epoch.")
    return (f"training on the CPU ({device}): {cost}; "
            "the progress bar shows the time left in each epoch.")
