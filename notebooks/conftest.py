"""nbval runs each notebook in a fresh kernel: smoke mode for CI, set for the kernel alone.

The kernel inherits the environment it is started in, and it starts while its notebook's first
cell is set up. The switches are set around that setup only, so the unit tests in the same
process never see them: `pytest tests/` alone and the whole suite give the same verdicts.
"""
import os
import shutil
from pathlib import Path

import pytest
from nbval.plugin import IPyNbCell

REPO_ROOT = Path(__file__).resolve().parents[1]


def checkpoint_folder(notebook: Path) -> Path:
    """Each notebook's own checkpoints folder: notebooks 7-9 never find the checkpoint notebook 6's
    smoke run wrote, whichever ran first, so their checked outputs never depend on the order."""
    return REPO_ROOT / "checkpoints" / f"nbval-{notebook.parent.name}-{notebook.stem}"


def kernel_environment(notebook: Path) -> dict[str, str]:
    """What a notebook's kernel runs with: smoke mode, its own checkpoints folder and temporary
    folder (cleared with it at the next run, so `tempfile.mkdtemp` leaves nothing behind), figures
    never shown in a window, no progress bars in the stored outputs, one thread per kernel beside
    parallel workers."""
    env = {"FMNIST_SMOKE": "1", "TQDM_DISABLE": "1",
           "FMNIST_CHECKPOINTS": str(checkpoint_folder(notebook)),
           "TMPDIR": str(checkpoint_folder(notebook) / "tmp"),
           "MPLBACKEND": os.environ.get("MPLBACKEND", "agg")}
    if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers (pytest -n): share the cores
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    return env


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    if not isinstance(item, IPyNbCell):
        return (yield)
    notebook = Path(str(item.parent.fspath))
    if item.parent.kernel is None:  # the notebook's first cell: its kernel starts now
        shutil.rmtree(checkpoint_folder(notebook), ignore_errors=True)  # an earlier run's files
        (checkpoint_folder(notebook) / "tmp").mkdir(parents=True)  # TMPDIR must exist to be used
    with pytest.MonkeyPatch.context() as patch:
        for name, value in kernel_environment(notebook).items():
            patch.setenv(name, value)
        return (yield)
