"""Exact resume: what a last checkpoint holds besides the weights, and putting it back.

The course's runner (machinery/engine.py) saves training_state() into every last checkpoint and
calls restore_training() for train_run(..., resume=path): on a CPU the resumed run repeats the
uninterrupted one exactly (on a GPU, cuDNN's non-deterministic kernels already make two
uninterrupted runs differ a little).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .basics import CheckpointError
from .checkpoint_file import load_weights, read_checkpoint


def rng_state(loader) -> dict:
    """Every random-number generator a training epoch draws from, so a resumed run repeats it."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
        "loader": loader.generator.get_state() if loader.generator is not None else None,
    }


def set_rng_state(state: dict, loader) -> None:
    """Put back the generators saved by rng_state()."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    if state["loader"] is not None and loader.generator is not None:
        loader.generator.set_state(state["loader"].cpu())


def training_state(optimizer: torch.optim.Optimizer, scheduler, early_stopping, history,
                   train_loader, writer=None, best_path: Path | str | None = None,
                   scaler: torch.amp.GradScaler | None = None) -> dict:
    """What a last checkpoint holds besides the weights, to resume exactly where it stopped."""
    return {
        "run_dir": str(writer.log_dir) if hasattr(writer, "log_dir") else None,  # TensorBoard
        "best_path": str(best_path) if best_path is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        # fp16
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "early_stopping": vars(early_stopping).copy() if early_stopping is not None else None,
        "history": vars(history).copy(),
        "rng": rng_state(train_loader),
    }


def restore_training(path: Path | str, network: str, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler, early_stopping, train_loader,
                     device: torch.device, scaler: torch.amp.GradScaler | None = None,
                     log: Callable[[str], None] = print) -> dict:
    """Load a last checkpoint's weights and training state into fresh objects; returns its
    history's fields."""
    payload = read_checkpoint(path, device)
    state = payload.get("training_state")
    if state is None:
        raise CheckpointError(f"{path} holds weights only, no training state to resume from: "
                              f"resume from the run's last checkpoint instead")
    if payload.get("model") != network:
        raise CheckpointError(f"{path} is a run of the {payload.get('model')!r} network, "
                              f"not {network!r}")
    load_weights(model, payload, path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):  # older checkpoints have none: a fresh scale
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its optimizer or scheduler state does not fit this run "
                              f"({e})") from None
    if early_stopping is not None and state["early_stopping"] is not None:
        vars(early_stopping).update(state["early_stopping"])
    set_rng_state(state["rng"], train_loader)
    history = state["history"]
    log(f"resumed from {path} after epoch {len(history['train_loss'])}"
        + (": that run had already stopped early, nothing left to do"
           if history["stopped_early"] else ""))
    return history


def interrupted_note(epoch: int, last_path: Path | str | None) -> str:
    """What to tell a student who stopped a run during `epoch`."""
    if epoch == 1:
        return "interrupted during epoch 1: no epoch finished, so there is no checkpoint yet"
    if not last_path:
        return f"interrupted during epoch {epoch}: this run kept no checkpoint to resume from"
    return (f"interrupted during epoch {epoch}: {last_path} holds epoch {epoch - 1}; continue "
            f"with train_run(..., resume={str(last_path)!r})")
