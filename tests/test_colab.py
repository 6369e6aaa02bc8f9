"""Colab: checkpoints kept on Google Drive are found first when the student says so, and a runtime
without a GPU is told what training costs there and how to switch to a T4 -- with stand-ins for
Colab and Drive, offline."""
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import helpers
from machinery import basics, colab
from machinery.tools import notebooks as course_notebooks


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Drive and checkpoints/ as empty temporary folders."""
    drive = tmp_path / "drive" / "MyDrive" / "fashion-mnist-cnn" / "checkpoints"
    local = tmp_path / "checkpoints"
    for module in (basics, colab):
        monkeypatch.setattr(module, "DRIVE_CHECKPOINTS", drive)
        monkeypatch.setattr(module, "CHECKPOINTS", local)
    return drive, local


@pytest.fixture
def in_colab(monkeypatch, folders):
    """A stand-in google.colab whose drive.mount records where it mounted and only then makes My
    Drive appear, with what the student keeps there (a fresh runtime starts unmounted)."""
    drive_folder, _ = folders
    my_drive = drive_folder.parents[1]
    cloud = my_drive.parent / "cloud"  # the student's Drive, out of reach until mounted
    (cloud / drive_folder.relative_to(my_drive)).mkdir(parents=True)
    mounted = []

    def mount(where):
        mounted.append(where)
        if not my_drive.exists():
            my_drive.symlink_to(cloud)

    package, drive = types.ModuleType("google.colab"), types.ModuleType("google.colab.drive")
    drive.mount = mount
    package.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", package)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    return mounted


def test_stages_7_to_9_use_your_run_then_the_reference(folders):
    _, local = folders
    assert helpers.course_checkpoint("original") == helpers.REFERENCE / "original.pt"
    assert (helpers.describe_checkpoint(helpers.course_checkpoint("original"))
            == "reference/original.pt (the course's reference)")
    local.mkdir(parents=True)
    (local / "original.pt").write_bytes(b"")
    assert helpers.course_checkpoint("original") == local / "original.pt"
    assert (helpers.describe_checkpoint(local / "original.pt")
            == "checkpoints/original.pt (yours, from stage 6)")
    said = []  # outside Colab the switch finds no Drive, and says so
    assert helpers.course_checkpoint("original", keep_on_drive=True, log=said.append) == \
        local / "original.pt"
    assert "not in Colab" in said[0]


def test_in_smoke_mode_yours_are_the_checkpoints_a_smoke_run_of_stage_6_writes(folders,
                                                                                monkeypatch):
    _, local = folders
    local.mkdir(parents=True)
    for name in ("original.pt", "original-last.pt"):  # a full run's: not this mode's
        (local / name).write_bytes(b"")
    monkeypatch.setenv("FMNIST_SMOKE", "1")
    assert helpers.course_checkpoint("original") == helpers.REFERENCE / "original.pt"
    best, last = helpers.checkpoint_paths(helpers.course_recipe(), local)  # stage 6's names
    best.write_bytes(b"")
    last.write_bytes(b"")
    assert helpers.course_checkpoint("original") == local / "original-smoke.pt" == best
    assert helpers.course_checkpoint("original-last") == local / "original-smoke-last.pt" == last
    monkeypatch.setenv("FMNIST_SMOKE", "0")
    assert helpers.course_checkpoint("original-last") == local / "original-last.pt"


def test_a_checkpoint_kept_on_drive_is_found_on_a_fresh_runtime_only_when_asked(folders,
                                                                                in_colab):
    drive, local = folders
    saved_by_stage_6 = drive.parents[2] / "cloud" / drive.relative_to(drive.parents[1])
    (saved_by_stage_6 / "original.pt").write_bytes(b"")
    local.mkdir(parents=True)
    (local / "original.pt").write_bytes(b"")
    # a student who never chose Drive is never asked to mount it
    assert helpers.course_checkpoint("original") == local / "original.pt" and not in_colab
    assert not drive.exists()
    # KEEP_ON_DRIVE = True: Drive is mounted first, and the checkpoint on it wins
    assert helpers.course_checkpoint("original", keep_on_drive=True) == drive / "original.pt"
    assert in_colab == [str(drive.parents[2])]
    assert helpers.describe_checkpoint(drive / "original.pt") == (
        "My Drive/fashion-mnist-cnn/checkpoints/original.pt (yours, from stage 6, "
        "kept on Google Drive)")
    # nothing on Drive: your local run, then the reference
    (saved_by_stage_6 / "original.pt").unlink()
    assert helpers.course_checkpoint("original", keep_on_drive=True) == local / "original.pt"
    (local / "original.pt").unlink()
    assert (helpers.course_checkpoint("original", keep_on_drive=True)
            == helpers.REFERENCE / "original.pt")
    assert len(in_colab) == 1  # mounted once: the later calls find Drive there


def test_checkpoints_go_to_drive_only_when_asked_and_in_colab(folders, monkeypatch, in_colab):
    drive, local = folders
    assert colab.checkpoint_folder(False) == local and not in_colab
    said = []
    assert colab.checkpoint_folder(True, log=said.append) == drive and drive.is_dir()
    assert in_colab == [str(drive.parents[2])] and "notebooks 7-9" in said[0]
    assert "KEEP_ON_DRIVE" in said[0]
    monkeypatch.delitem(sys.modules, "google.colab")
    assert colab.checkpoint_folder(True, log=said.append) == local and "not in Colab" in said[-1]


def test_a_runtime_without_a_gpu_is_told_the_cost_and_how_to_switch(monkeypatch):
    minutes = helpers.read_checkpoint(
        helpers.REFERENCE / "original.pt")["reference"]["training_minutes"]
    here = colab.runtime_note(torch.device("cpu"))
    assert f"took {minutes:.0f} min on CPU" in here and "T4" not in here
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    in_colab = colab.runtime_note(torch.device("cpu"))
    assert ("no GPU" in in_colab and "Change runtime type > T4 GPU" in in_colab
            and f"{minutes:.0f} min" in in_colab)


STAND_IN_DRIVE = '''\
"""Stand-in for google.colab.drive: My Drive appears at the mount point only once mounted."""
import os
from pathlib import Path


def mount(mountpoint, **kwargs):
    my_drive = Path(mountpoint) / "MyDrive"
    my_drive.parent.mkdir(parents=True, exist_ok=True)
    cloud = Path(os.environ["STAND_IN_CLOUD"])  # the student's Drive, in the cloud
    cloud.mkdir(parents=True, exist_ok=True)
    if not my_drive.is_symlink():  # mounting again changes nothing
        my_drive.symlink_to(cloud)
    print(f"Mounted at {mountpoint}")
'''


def stand_in_colab(tmp_path: Path) -> dict:
    """A fresh Colab runtime: google.colab imported when the kernel starts (as Colab does), Drive
    unmounted, the student's Drive holding what stage 6 kept there; the environment to run in."""
    site = tmp_path / "site" / "google" / "colab"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("from . import drive  # noqa: F401\n")
    (site / "drive.py").write_text(STAND_IN_DRIVE)
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab  # noqa: F401\n")
    return {**os.environ, "PYTHONPATH": str(tmp_path / "site"),
            "IPYTHONDIR": str(tmp_path / "ipython"), "STAND_IN_CLOUD": str(tmp_path / "cloud"),
            "FMNIST_DRIVE": str(tmp_path / "content" / "drive"), "FMNIST_SMOKE": "1",
            "TQDM_DISABLE": "1", "MPLBACKEND": "agg"}


def course_on_github(tmp_path: Path) -> Path:
    """A stand-in for the course's repository on GitHub: what a student's runtime fetches (code,
    reference checkpoints, pictures; the notebooks come from Colab), tagged v-test."""
    origin = tmp_path / "github"
    origin.mkdir()
    for part in ("helpers.py", "machinery", "reference", "images"):
        if (helpers.REPO_ROOT / part).is_dir():
            shutil.copytree(helpers.REPO_ROOT / part, origin / part,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(helpers.REPO_ROOT / part, origin / part)
    (origin / "notebooks").mkdir()
    (origin / "notebooks" / "README.md").write_text("the notebooks\n")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-C", str(origin)]
    for step in (["init", "--quiet"], ["add", "."], ["commit", "--quiet", "-m", "course"],
                 ["tag", "v-test"]):
        subprocess.run(git + step, check=True)
    return origin


def open_in_colab(stem: str, runtime: Path, github: Path, until: str | None = None) -> Path:
    """A notebook opened from GitHub in a fresh runtime, its KEEP_ON_DRIVE switched to True, as
    published at the stand-in GitHub's tag v-test; with `until`, only its cells up to the last
    one whose code holds that text (the cells after it are nbval's to run)."""
    notebook = json.loads((helpers.REPO_ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    if until:
        last = max(i for i, cell in enumerate(notebook["cells"])
                   if cell["cell_type"] == "code" and until in "".join(cell["source"]))
        notebook["cells"] = notebook["cells"][:last + 1]
    notebook["cells"][1]["source"] = course_notebooks.setup_cell(github.as_uri(), "v-test")
    switch = "KEEP_ON_DRIVE = False"
    cells = [cell for cell in notebook["cells"] if switch in "".join(cell["source"])]
    assert len(cells) == 1
    cells[0]["source"] = "".join(cells[0]["source"]).replace(switch, "KEEP_ON_DRIVE = True")
    runtime.mkdir(parents=True)
    opened = runtime / f"{stem}.ipynb"
    opened.write_text(json.dumps(notebook))
    return opened


@pytest.mark.whole_checkout
def test_a_colab_student_keeps_stage_6_on_drive_and_stages_7_to_9_use_it(tmp_path):
    """The walk-through: notebook 6 (smoke mode) keeps its checkpoints on Drive; notebooks 7, 8
    and 9 each open on a fresh runtime -- nothing on its disk, the course fetched at its tag,
    Drive unmounted -- and each uses the student's checkpoint."""
    github = course_on_github(tmp_path)
    env = {**stand_in_colab(tmp_path),
           "FMNIST_DATA": str(helpers.DATA_ROOT / "FashionMNIST" / "raw")}
    cloud = tmp_path / "cloud" / "fashion-mnist-cnn" / "checkpoints"  # the student's Drive
    said = {}
    for stem in ("06_train", "07_predict", "08_evaluate", "09_save_load"):
        runtime = tmp_path / f"runtime-{stem}" / "content"  # each notebook: a fresh /content
        env["FMNIST_DRIVE"] = str(runtime / "drive")
        # stage 6 whole (it trains and keeps its checkpoints); 7-9 up to their last checkpoint
        opened = open_in_colab(stem, runtime, github,
                               until=None if stem == "06_train" else "course_checkpoint(")
        run = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook",
                              "--execute", "--inplace", str(opened)],
                             cwd=runtime, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{stem}: {run.stderr[-2000:]}"
        said[stem] = course_notebooks.stored_text(opened)
        assert said[stem].count(f"Mounted at {runtime / 'drive'}") == 1, stem  # once a runtime
        assert (runtime / "fashion-mnist-cnn" / "helpers.py").is_file()  # fetched at the tag
    assert sorted(p.name for p in cloud.glob("*.pt")) == ["original-smoke-last.pt",
                                                          "original-smoke.pt"]
    best = helpers.read_checkpoint(cloud / "original-smoke.pt")
    yours = ("My Drive/fashion-mnist-cnn/checkpoints/original-smoke.pt (yours, from stage 6, "
             "kept on Google Drive)")
    valid = f"validation accuracy {best['metrics']['valid_accuracy']:.2%}"
    assert f"using {yours}\nsaved after epoch {best['epoch']}, {valid}" in said["07_predict"]
    assert f"checkpoint: {yours}\nsaved at epoch {best['epoch']}, {valid}" in said["08_evaluate"]
    assert f"using {yours}, epoch {best['epoch']}" in said["09_save_load"]
    last = helpers.read_checkpoint(cloud / "original-smoke-last.pt")
    for name, checkpoint in (("original-smoke.pt", best), ("original-smoke-last.pt", last)):
        line = f"{'checkpoints/' + name:28s} epoch {checkpoint['epoch']:>2}"  # as notebook 9 prints
        assert f"\n{line}" in said["09_save_load"]
    assert "reference/original" not in said["07_predict"] + said["08_evaluate"]
    # notebook 6 tells the student where the files went: Drive, not the runtime's lost disk
    on_drive = "My Drive/fashion-mnist-cnn/checkpoints/original-smoke.pt"
    assert f"at epoch {best['epoch']} -> {on_drive}" in said["06_train"]
