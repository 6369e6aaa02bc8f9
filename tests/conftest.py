"""Shared fixtures: the real Fashion-MNIST (prepared once), small real subsets, a CPU device."""
import os
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers (pytest -n): one thread each, so they
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # share the cores instead of fighting for them

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import helpers  # noqa: E402
from machinery import dataset  # noqa: E402


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The course's data root, filled from the local copy (never downloaded in tests)."""
    return helpers.prepare_data(helpers.DATA_ROOT)


@pytest.fixture(scope="session")
def small_recipe() -> helpers.Recipe:
    """A few hundred real images: enough to see learning, fast on two cores."""
    return helpers.course_recipe(smoke=True, train_size=512, valid_size=256, test_size=256,
                                   batch_size=32)


@pytest.fixture(scope="session")
def small_sets(data_root, small_recipe):
    return helpers.load_datasets(small_recipe, root=data_root)


@pytest.fixture
def ctrl_c_in_epoch(monkeypatch):
    """Call it with N: helpers.train_one_epoch raises KeyboardInterrupt in epoch N, as Ctrl-C (or
    Colab's stop button) would."""
    def press(epoch: int) -> None:
        real_train_one_epoch, calls = helpers.train_one_epoch, []

        def train_one_epoch(*args):
            calls.append(1)
            if len(calls) == epoch:
                raise KeyboardInterrupt
            return real_train_one_epoch(*args)

        monkeypatch.setattr(helpers, "train_one_epoch", train_one_epoch)
    return press


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")


class LoudNet(torch.nn.Module):
    """One linear layer on images scaled by 10: its first fp16 gradients, scaled by the gradient
    scaler's 65,536, overflow and later ones do not, as with the improved network -- in
    milliseconds instead of a minute on a CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = torch.nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(10 * x.flatten(1))


@pytest.fixture
def loud_network(monkeypatch) -> str:
    """The course name of LoudNet, registered in helpers.NETWORKS for this test only."""
    monkeypatch.setitem(helpers.NETWORKS, "loud", LoudNet)
    return "loud"


@pytest.fixture
def no_local_copy(monkeypatch, tmp_path):
    """No FMNIST_DATA, no Debian copy, and torchvision's mirror on a closed loopback port."""
    monkeypatch.delenv("FMNIST_DATA", raising=False)
    monkeypatch.setattr(dataset, "DEBIAN_DATA_DIR", tmp_path / "no-debian-copy")
    # Port 9 (discard) on loopback refuses connections: the real download code fails as offline.
    monkeypatch.setattr(dataset.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])


# The longest files first: each worker takes the next file when it is free (--dist loadfile), so a
# long file left for last keeps one worker busy while the other waits. Measured with
# `pytest --durations=0` on the 2-core Intel Xeon (2026-12-05); the rest keep their order.
LONGEST_FIRST = ("tests/test_reference.py", "tests/test_colab.py",
                 "notebooks/solutions/10_improvements_solutions.ipynb", "tests/test_wiring.py",
                 "tests/test_cli.py", "tests/test_tensorboard.py", "tests/test_resume.py",
                 "notebooks/solutions/06_train_solutions.ipynb",
                 "notebooks/solutions/08_evaluate_solutions.ipynb", "tests/test_fast_path.py",
                 "notebooks/10_improvements.ipynb", "notebooks/06_train.ipynb")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def longest_first(item) -> int:
        return rank.get(Path(str(item.fspath)).relative_to(REPO_ROOT).as_posix(), len(rank))
    items.sort(key=longest_first)  # a stable sort: each file's tests stay in their order


# After the whole run (unit tests and notebooks): nothing may be left behind outside the ignored
# folders, and no TensorBoard server may outlive the tests that started it.

def untracked_files() -> set[str] | None:
    """Files git neither tracks nor ignores (None outside a git checkout)."""
    import subprocess
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line[3:] for line in out.splitlines() if line.startswith("??")}


def tensorboard_processes() -> set[int]:
    """Process ids of running TensorBoard servers."""
    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"tensorboard" in command and b"--logdir" in command:
            pids.add(int(proc.name))
    return pids


def pytest_sessionstart(session):
    session.config.stash_before = (untracked_files(), tensorboard_processes())


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("PYTEST_XDIST_WORKER") or not hasattr(session.config, "stash_before"):
        return  # the controller checks once, after every worker has finished
    files_before, servers_before = session.config.stash_before
    files_after = untracked_files()
    stray = (sorted(files_after - files_before)
             if files_before is not None and files_after is not None else [])
    servers = sorted(tensorboard_processes() - servers_before)
    if stray or servers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(f"LEFT BEHIND by the test run: files {stray[:10]}, "
                            f"TensorBoard servers {servers}", red=True)
        session.exitstatus = 1
