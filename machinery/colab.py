"""Colab: keep checkpoints on Google Drive, and say what training costs on a runtime without a GPU."""
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
    """Where stage 6 saves checkpoints: Google Drive when asked and in Colab (mounted here), else checkpoints/."""
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


def runtime_note(device: torch.device, reference: Path = REFERENCE / "original.pt") -> str:
    """One paragraph on where training runs: the GPU's name, or what the full run costs on a CPU."""
    if device.type == "cuda":
        return f"training on the GPU: {torch.cuda.get_device_name(device)}"
    made = read_checkpoint(reference).get("reference", {})
    cost = (f"the course's reference run of this recipe took {made['training_minutes']:.0f} min on "
            f"{made['machine']}" if "training_minutes" in made else "a full run takes about an hour on a CPU")
    if in_colab():
        return (f"This Colab runtime has no GPU: {cost}. For a few minutes instead: {T4_HOWTO}. "
                "Or carry on here: the progress bar shows the time left in each epoch.")
    return f"training on the CPU ({device}): {cost}; the progress bar shows the time left in each epoch."
