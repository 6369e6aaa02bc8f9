"""The bottom layer: where the course keeps its files, the class names, the errors a student can
fix, smoke mode, and the one-line description of this machine."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO_ROOT / "data"            # torchvision's layout below it: data/FashionMNIST/raw/
RUNS_ROOT = REPO_ROOT / "runs"            # one TensorBoard run directory per training run
# yours, from training (not in git); FMNIST_CHECKPOINTS moves it (the notebook tests give each
# notebook its own, so none finds a checkpoint another notebook's smoke run left)
CHECKPOINTS = Path(os.environ.get("FMNIST_CHECKPOINTS", REPO_ROOT / "checkpoints"))
REFERENCE = REPO_ROOT / "reference"       # trained by the course authors, shipped in git
# In Colab, checkpoints kept on Google Drive outlive the runtime, and notebooks 7-9 find them there.
# Colab mounts Drive at /content/drive; FMNIST_DRIVE moves it (the tests' stand-in Colab).
DRIVE_MOUNT = Path(os.environ.get("FMNIST_DRIVE", "/content/drive"))
DRIVE_CHECKPOINTS = DRIVE_MOUNT / "MyDrive" / "fashion-mnist-cnn" / "checkpoints"

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class CourseError(Exception):
    """A problem the student can fix; the message says how (the CLI prints it as one line)."""


class DatasetError(CourseError):
    """The Fashion-MNIST files are missing, corrupt or cannot be written."""


class CheckpointError(CourseError):
    """A checkpoint file is unreadable or belongs to another network."""


def smoke_mode() -> bool:
    """True when FMNIST_SMOKE is set (CI runs every notebook this way)."""
    return os.environ.get("FMNIST_SMOKE", "").strip().lower() not in ("", "0", "false", "no")


def storing_outputs() -> bool:
    """True while the course's tools re-run a notebook to store its outputs: nobody watches a
    dashboard."""
    return os.environ.get("FMNIST_STORING_OUTPUTS") == "1"


def machine() -> str:
    """A one-line description of this machine, for the notebooks' closing "produced on" line."""
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()} with torch {torch.__version__}"
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), "CPU") if cpuinfo.exists() else "CPU"
    threads = torch.get_num_threads()  # os.cpu_count() counts logical CPUs, hyperthreads too
    return (f"CPU only ({cpu}, {os.cpu_count()} CPUs, torch using {threads} "
            f"thread{'s' if threads > 1 else ''}) with torch {torch.__version__}")


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks a CUDA GPU when there is one (never MPS: the course is not measured there);
    'cpu', 'cuda', 'cuda:1', 'mps' pick that device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA GPU: "
                         "use cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        present = ", ".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))
        raise ValueError(f"device {name!r} asked for, but this machine has only {present}: "
                         f"use one of them or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS is not available here: "
                         "use cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def checkpoint_location(path: Path | str) -> str:
    """Where a checkpoint is, as a student finds it: on My Drive, in the course's checkpoints/ or
    reference/ folder, or elsewhere by its whole path."""
    path = Path(path)
    if path.parent == DRIVE_CHECKPOINTS:
        return f"My Drive/fashion-mnist-cnn/checkpoints/{path.name}"
    if path.parent in (CHECKPOINTS, REFERENCE):
        return f"{path.parent.name}/{path.name}"
    return str(path)


def describe_checkpoint(path: Path | str) -> str:
    """Where a checkpoint is and whose it is, for the notebooks that load one."""
    path = Path(path)
    whose = {DRIVE_CHECKPOINTS: "yours, from stage 6, kept on Google Drive",
             CHECKPOINTS: "yours, from stage 6",
             REFERENCE: "the course's reference"}.get(path.parent)
    where = checkpoint_location(path)
    return f"{where} ({whose})" if whose else where


def progress(batches, what: str):
    """The batches with a progress bar and the time left (tqdm): a widget in Colab and Jupyter, a
    line in a terminal; off when the output is a file or a CI log, or when TQDM_DISABLE is set."""
    from tqdm.auto import tqdm
    off = True if os.environ.get("TQDM_DISABLE") else None  # None: on only where someone watches
    return tqdm(batches, desc=what, unit="batch", leave=False, mininterval=1.0, disable=off)


@contextmanager
def atomic_write(path: Path | str):
    """A file opened for writing that replaces `path` only when the block ends without an error:
    a crash or a failed check never leaves half a file at `path` (bytes reach the disk first)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half
    finally:
        tmp.unlink(missing_ok=True)
