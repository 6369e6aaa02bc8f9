"""Install files: requirements.txt and environment.yml agree and admit Colab's preinstalled torch;
the Makefile, the README's quick start and .ci/run agree on the two commands."""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import helpers


def requirements_txt() -> dict[str, str]:
    lines = (helpers.REPO_ROOT / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    return {r.name.lower(): str(r.specifier) for r in reqs}


def environment_yml_pip() -> dict[str, str]:
    text = (helpers.REPO_ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    reqs = [Requirement(m) for m in re.findall(r"^\s+- (\S+)\s*$", pip_section, flags=re.M)]
    return {r.name.lower(): str(r.specifier) for r in reqs}


def test_both_install_files_list_the_same_packages_and_ranges():
    assert requirements_txt() == environment_yml_pip()
    for needed in ("torch", "torchvision", "torchsummary", "tensorboard", "matplotlib", "numpy",
                   "jupyter", "nbval", "pytest"):
        assert needed in requirements_txt(), needed


@pytest.mark.parametrize("package, version", [
    ("torch", "2.11.0"), ("torchvision", "0.26.0"), ("tensorboard", "2.20.0"), ("numpy", "2.1.0"),
    ("matplotlib", "3.10.0"), ("torchsummary", "1.5.1"),   # Google Colab, Aug 2026
    ("torch", "2.14.1"), ("torchvision", "0.29.1"),        # this course's CI machine
])
def test_ranges_admit_colab_and_ci_versions(package, version):
    from packaging.specifiers import SpecifierSet
    assert Version(version) in SpecifierSet(requirements_txt()[package])


# The two commands on a fresh machine: the README's quick start, the Makefile and CI agree.
TRAIN_COMMANDS = [".venv/bin/python helpers.py train",
                  ".venv/bin/python helpers.py evaluate checkpoints/original.pt --json"]
TEST_COMMAND = ".venv/bin/python -m pytest"
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_env() -> dict[str, str]:
    """The environment without what would change make's choices (PYTHON ?= python3, MAKEFLAGS)."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHON", "MAKEFLAGS", "MAKELEVEL", "FMNIST_SMOKE")}


def make_dry_run(*args: str, cwd=None, env: dict[str, str] | None = None) -> list[str]:
    """The commands `make -n ARGS` would run, one per line (dry run: nothing is executed)."""
    out = subprocess.run(["make", "-n", *args], cwd=cwd or helpers.REPO_ROOT, check=True,
                         capture_output=True, text=True, env={**make_env(), **(env or {})}).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def quick_start_section() -> str:
    readme = (helpers.REPO_ROOT / "README.md").read_text()
    return readme.split("## Quick start on your own machine", 1)[1].split("\n## ", 1)[0]


def quick_start_commands() -> list[str]:
    """The shell lines in the quick start's code blocks, comments stripped."""
    blocks = re.findall(r"```bash\n(.*?)```", quick_start_section(), flags=re.S)
    lines = (line.split("#")[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line]


def test_readme_quick_start_is_make_train_and_make_test():
    commands = quick_start_commands()
    assert "make train" in commands and "make test" in commands and "make lab" in commands
    # make does it
    assert not any("pip install" in c or "-m venv" in c for c in commands), commands
    # prerequisites
    assert any("python3-venv" in c and "make" in c.split() for c in commands), commands


@needs_make
def test_make_train_and_test_run_the_readme_commands():
    train, test = make_dry_run("train"), make_dry_run("test")
    assert train[-2:] == TRAIN_COMMANDS, train
    assert test[-1] == TEST_COMMAND, test
    section = " ".join(quick_start_section().split())  # a code span may wrap onto a new line
    for command in TRAIN_COMMANDS + [TEST_COMMAND]:
        assert f"`{command}`" in section, command   # the README says what each target runs
    assert make_dry_run("lab")[-1] == ".venv/bin/jupyter lab notebooks/"


@needs_make
def test_make_train_in_smoke_mode_evaluates_the_checkpoint_it_wrote():
    smoke_best = helpers.checkpoint_paths(helpers.course_recipe(smoke=True))[0].relative_to(
        helpers.REPO_ROOT)
    assert make_dry_run("train", env={"FMNIST_SMOKE": "1"})[-1] == \
        f".venv/bin/python helpers.py evaluate {smoke_best.as_posix()} --json"
    assert make_dry_run("train", env={"FMNIST_SMOKE": "0"})[-2:] == TRAIN_COMMANDS


@needs_make
@pytest.mark.parametrize("value", ["1", "yes", "True", "0", "false", "False", "FALSE", "no", "NO"])
def test_make_train_reads_fmnist_smoke_as_the_course_does(value, monkeypatch):
    """`FMNIST_SMOKE=False make train` trains in full mode, so it evaluates original.pt."""
    monkeypatch.setenv("FMNIST_SMOKE", value)
    best = helpers.checkpoint_paths(helpers.course_recipe())[0].relative_to(helpers.REPO_ROOT)
    assert make_dry_run("train", env={"FMNIST_SMOKE": value})[-1] == \
        f".venv/bin/python helpers.py evaluate {best.as_posix()} --json"


@needs_make
def test_make_train_evaluates_where_fmnist_checkpoints_moved_the_checkpoints(tmp_path):
    moved = make_dry_run("train", env={"FMNIST_SMOKE": "0", "FMNIST_CHECKPOINTS": str(tmp_path)})
    assert moved[-1] == f".venv/bin/python helpers.py evaluate {tmp_path}/original.pt --json"


def test_ci_runs_make_test():
    script = (helpers.REPO_ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines()
                if line.strip() and not line.strip().startswith(("#", "echo"))]
    assert "make test" in commands and "make test-colab" in commands, commands
    # only via make
    assert not any("pytest" in c or "pip install" in c for c in commands), commands
    apt = next(c for c in commands if "apt-get install" in c).split()
    for package in ("make", "python3-venv", "dataset-fashion-mnist", "chromium"):
        assert package in apt, package


def test_the_floors_of_the_course_libraries_are_colabs_tested_versions():
    pins = {}
    for line in (helpers.REPO_ROOT / "requirements-colab.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("#")[0].strip().split("==")
            pins[name] = version.removesuffix(".*")
    assert {"torch", "torchvision", "tensorboard", "numpy", "matplotlib", "pillow",
            "tqdm"} <= set(pins)
    del pins["protobuf"]  # not ours: tensorboard's, pinned because Colab has 5.29
    for name, version in pins.items():  # each floor is the version make test-colab installs
        assert requirements_txt()[name] == f">={version}" or (
            requirements_txt()[name] == f">={version}.0"), (name, requirements_txt()[name])


@needs_make
def test_make_test_colab_runs_the_same_tests_on_colabs_pinned_stack():
    assert make_dry_run("test-colab")[-1] == ".venv-colab/bin/python -m pytest"
    pins = (helpers.REPO_ROOT / "requirements-colab.txt").read_text().splitlines()
    assert "-r requirements.txt" in pins  # the course's ranges, then Colab's versions inside them
    for pin in ("torch==2.11.*", "torchvision==0.26.*", "tensorboard==2.20.*"):
        assert pin in pins, pin


@needs_make
def test_make_sets_up_the_venv_only_when_requirements_change(tmp_path):
    for name in ("Makefile", "requirements.txt"):
        shutil.copy(helpers.REPO_ROOT / name, tmp_path / name)

    def installs() -> bool:
        steps = make_dry_run("test", cwd=tmp_path)
        assert steps[-1] == TEST_COMMAND, steps
        return any("python3 -m venv .venv" in s for s in steps) and \
            any(".venv/bin/python -m pip install" in s and "-r requirements.txt" in s
                for s in steps)

    assert installs()                                   # no .venv yet
    (tmp_path / ".venv").mkdir()
    stamp = tmp_path / ".venv" / ".installed"
    stamp.touch()
    now = time.time()
    os.utime(tmp_path / "requirements.txt", (now - 60, now - 60))
    assert not installs()                               # stamp newer than requirements.txt
    os.utime(stamp, (now - 120, now - 120))
    assert installs()                                   # requirements.txt changed since


@needs_make
def test_make_without_venv_module_says_install_python3_venv(tmp_path):
    """Debian and Ubuntu ship python3 without ensurepip; `python3 -m venv` then fails."""
    for name in ("Makefile", "requirements.txt"):
        shutil.copy(helpers.REPO_ROOT / name, tmp_path / name)
    (tmp_path / "no_ensurepip" / "ensurepip").mkdir(parents=True)
    (tmp_path / "no_ensurepip" / "ensurepip" / "__init__.py").write_text(
        "raise ImportError('like Debian without python3-venv')\n")
    python = tmp_path / "python3"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={tmp_path / 'no_ensurepip'} "
                      f"exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    run = subprocess.run(["make", "test", f"PYTHON={python}"], cwd=tmp_path,
                         capture_output=True, text=True, env=make_env())
    assert run.returncode != 0
    ours = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(ours) == 1 and "sudo apt-get install python3-venv" in ours[0], run.stdout
    assert "Traceback" not in run.stdout + run.stderr
    assert not (tmp_path / ".venv" / ".installed").exists()


@needs_make
@pytest.mark.parametrize("pip_works", [True, False])
def test_make_venv_stamps_a_good_install_and_shows_only_pip_errors(tmp_path, pip_works):
    """The setup step for real, with a stand-in .venv whose python logs its calls: a good install
    writes .venv/.installed and the next run skips pip; a failed one shows pip's errors without
    the 'WARNING: Location' noise, fails, and leaves no stamp."""
    for name in ("Makefile", "requirements.txt"):
        shutil.copy(helpers.REPO_ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls.log"
    pip = ('echo "WARNING: Location \'/nowhere\' is ignored"; '
           'echo "ERROR: No matching distribution"; exit 1'
           if not pip_works else "exit 0")
    (bin_dir / "python").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\nif [ "$2" = pip ]; then {pip}; fi\n')
    (bin_dir / "pip").write_text("#!/bin/sh\nexit 0\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)

    def make_venv():
        return subprocess.run(["make", "venv"], cwd=tmp_path, capture_output=True, text=True,
                              env=make_env())

    first = make_venv()
    assert "-m pip install -q -r requirements.txt" in calls.read_text()
    if not pip_works:
        assert first.returncode != 0
        assert "ERROR: No matching distribution" in first.stdout
        assert "WARNING: Location" not in first.stdout + first.stderr
        assert not (tmp_path / ".venv" / ".installed").exists()
        return
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tmp_path / ".venv" / ".installed").exists()
    before = calls.read_text()
    second = make_venv()
    assert second.returncode == 0 and calls.read_text() == before   # nothing re-installed


def test_the_readme_wraps_its_prose_at_100_characters():
    """The course's line limit, as the notebooks' lint applies it: table rows are exempt."""
    lines = (helpers.REPO_ROOT / "README.md").read_text().splitlines()
    long = [number for number, line in enumerate(lines, start=1)
            if len(line) > 100 and not line.lstrip().startswith("|")]
    assert not long, f"README lines over 100 characters: {long}"
