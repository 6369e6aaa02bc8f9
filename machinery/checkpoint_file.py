"""The checkpoint file: its format, the atomic write, the safe read, and errors a student can act
on.

helpers.save_checkpoint saves one; this module decides what the file holds, writes and reads it.
"""
from __future__ import annotations

import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .basics import CLASSES, DRIVE_MOUNT, CheckpointError, atomic_write, machine

CHECKPOINT_FORMAT = "fmnist-course-checkpoint/1"


def checkpoint_payload(model: nn.Module, network: str | None, **about) -> dict:
    """What a checkpoint file holds: the weights (on the CPU), which network they fit, where and
    when they were trained, and whatever `about` adds (epoch, figures, recipe, training state)."""
    about = {name: readable_back(value, name) for name, value in about.items()}
    return {"format": CHECKPOINT_FORMAT, "model": network, "architecture": type(model).__name__,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "classes": list(CLASSES), "torch_version": str(torch.__version__),
            "machine": machine(), "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"), **about}


def readable_back(value, where: str):
    """`value` as safe (weights-only) loading reads it back: numpy numbers become Python numbers,
    paths strings; anything else but tensors and plain values is refused now, not at loading."""
    if isinstance(value, np.generic):  # np.float64(0.93), e.g. from np.mean: a float subclass
        return value.item()
    if isinstance(value, (torch.Tensor, str, int, float, bool, type(None))):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: readable_back(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(readable_back(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise CheckpointError(
        f"cannot save {where}, a {type(value).__name__}: a checkpoint keeps numbers, strings, "
        f"lists, dicts and tensors, the values safe loading reads back; convert it (float(x), "
        f"str(x), torch.tensor(x)) or leave it out")


def write_atomically(payload: dict, path: Path | str) -> Path:
    """torch.save `payload` to `path`; a crash mid-write never leaves a half-written file there."""
    path = Path(path)
    if DRIVE_MOUNT in path.absolute().parents and not (DRIVE_MOUNT / "MyDrive").is_dir():
        # mkdir would make a folder of that name on the runtime's own disk, lost when it recycles
        raise CheckpointError(f"{path} is on Google Drive, which is not mounted: mount it first "
                              f"(stage 6's checkpoint_folder(keep_on_drive=True) does)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        torch.save(payload, file)
    return path


def read_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> dict:
    """The checkpoint's contents as a dict; a bare state_dict (the original notebook's) is
    wrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types here: zip, pickle, EOF, runtime errors
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: "
                              f"{why_unreadable(path, e)}") from None
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return payload
    if (isinstance(payload, dict) and payload
            and all(isinstance(v, torch.Tensor) for v in payload.values())):
        # torch.save(model.state_dict(), ...) as in the original notebook: assume its network
        return {"format": "bare state_dict", "model": "original", "state_dict": payload,
                "epoch": None, "metrics": {}}
    raise CheckpointError(f"{path} holds a {type(payload).__name__}, "
                          f"not a course checkpoint or a state_dict")


def why_unreadable(path: Path, error: Exception) -> str:
    """What is wrong with a file torch.load refused, in words a student can act on."""
    head = path.read_bytes()[:4]
    if not head:
        return "the file is empty"
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return "the file is cut short (an interrupted download or copy?): copy it again"
    # torch.save writes a zip archive (old torch: a pickle)
    if not head.startswith((b"PK", b"\x80")):
        return "torch.save writes a zip archive and this file is not one (a text file? an image?)"
    if isinstance(error, pickle.UnpicklingError):
        return ("it holds Python objects that safe (weights-only) loading refuses: not a course "
                "checkpoint or a state_dict; never load such files from sources you do not trust")
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def load_weights(model: nn.Module, payload: dict, path: Path | str) -> nn.Module:
    """Copy a checkpoint's weights into `model` (strict), or say clearly why they do not fit."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in payload["state_dict"].items()}
    problems = []
    for label, keys in (("missing", [k for k in expected if k not in found]),
                        ("unexpected", [k for k in found if k not in expected])):
        if keys:
            problems.append(f"{len(keys)} {label} key{'s' * (len(keys) > 1)} ({', '.join(keys[:3])}"
                            f"{', ...' if len(keys) > 3 else ''})")
    problems += [f"{k} is {list(found[k])} in the file but {list(expected[k])} in the network"
                 for k in expected if k in found and found[k] != expected[k]][:3]
    if problems:
        saved = payload.get("architecture") or "a bare state_dict"  # the original notebook's
        raise CheckpointError(f"{path} ({saved}) does not fit {type(model).__name__}: "
                              f"{'; '.join(problems)}; for another network, pass a fresh one: "
                              f"load_checkpoint(path, model=YourNetwork())")
    model.load_state_dict(payload["state_dict"], strict=True)
    return model
