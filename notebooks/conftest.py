"""nbval runs each notebook in a fresh kernel: smoke mode for CI, set for the kernel alone.

The kernel inherits the environment it is started in, and it starts while its notebook's first
cell is set up. The switches are set around that setup only, so the unit tests in the same
process never see them: `pytest tests/` alone and the whole suite give the same verdicts.
"""
import os

import pytest
from nbval.plugin import IPyNbCell


def kernel_environment() -> dict[str, str]:
    """What a notebook's kernel runs with: smoke mode, figures never shown in a window, no
    progress bars in the stored outputs, one thread per kernel beside parallel workers."""
    env = {"FMNIST_SMOKE": "1", "TQDM_DISABLE": "1",
           "MPLBACKEND": os.environ.get("MPLBACKEND", "agg")}
    if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers (pytest -n): share the cores
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    return env


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    if not isinstance(item, IPyNbCell):
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in kernel_environment().items():
            patch.setenv(name, value)
        return (yield)
