"""The notebooks as an instructor handles them: the Colab badge and setup cell stamped into each
one (`sync`), the rules a committed notebook must meet (`lint`), and a full re-run (`execute`).

Where the course is published -- the repository's address and the version (a tag or a commit) --
is written once, in course_address.json; `python -m machinery.tools publish` changes it and stamps
every notebook.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from ..basics import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
# worked answers to each stage's "Try this", one notebook per stage
SOLUTIONS = NOTEBOOKS / "solutions"
# the one place the address is written
ADDRESS_FILE = Path(__file__).with_name("course_address.json")
ADDRESS = json.loads(ADDRESS_FILE.read_text())  # {"repository": "https://...", "version": "v1.0"}
ARCHIVE_NAME = "fashion-mnist-cnn.zip"  # for a class without a public repository (`archive`)
NAME_PATTERN = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")


def setup_cell(repository: str, version: str) -> str:
    """The first code cell of every notebook: helpers.py importable in Colab and in Jupyter
    alike."""
    # Copied into every committed notebook by `sync`: rewrap it only together with them.
    return f'''\
# Setup: make the course's helpers.py importable, in Colab and in Jupyter alike.
import os, shutil, subprocess, sys, time, zipfile
from pathlib import Path

notebook_start = time.perf_counter()
COURSE_REPO = os.environ.get("FMNIST_COURSE_REPO", "{repository}")
# the version these notebooks belong to
COURSE_REF = os.environ.get("FMNIST_COURSE_REF", "{version}")
COURSE_ZIP = "{ARCHIVE_NAME}"  # or the course as an archive, in Colab's Files panel or on Drive

class CourseNotFound(Exception):
    def _render_traceback_(self):  # Jupyter shows this one line, not a traceback
        return [f"CourseNotFound: {{self}}"]

def find_course_root():
    folders = (Path.cwd(), *Path.cwd().parents)
    return next((p for p in folders if (p / "helpers.py").is_file()), None)

def fetch_course(folder="fashion-mnist-cnn"):
    """Colab: unpack the course's archive when there is one, else fetch the course at COURSE_REF."""
    for archive in (Path(COURSE_ZIP), Path("/content/drive/MyDrive") / COURSE_ZIP):
        if archive.is_file():
            zipfile.ZipFile(archive).extractall(".")  # it holds fashion-mnist-cnn/
            return
    git = ["git", "-C", folder]  # a tag or a commit: init, fetch that one version, check it out
    for step in (["git", "init", "--quiet", folder],
                 git + ["fetch", "--quiet", "--depth", "1", COURSE_REPO, COURSE_REF],
                 git + ["checkout", "--quiet", "FETCH_HEAD"]):
        if subprocess.run(step, capture_output=True).returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise CourseNotFound(f"could not fetch {{COURSE_REPO}} at {{COURSE_REF}}. Ask your "
                                 f"instructor for the course's address, or upload {{COURSE_ZIP}} "
                                 f"to Colab's Files panel, then run this cell again.")

if find_course_root() is None and "google.colab" in sys.modules:
    # Colab opens a notebook on its own: fetch the course next to it, at this notebook's version.
    # torch, torchvision, tensorboard and numpy are already installed there: nothing is
    # reinstalled.
    if not Path("fashion-mnist-cnn").is_dir():
        fetch_course()
    os.chdir("fashion-mnist-cnn/notebooks")
COURSE_ROOT = find_course_root()
if COURSE_ROOT is None:
    raise RuntimeError("helpers.py not found: open this notebook from the course's "
                       "notebooks/ folder")
sys.path.insert(0, str(COURSE_ROOT))'''


SETUP_CELL = setup_cell(ADDRESS["repository"], ADDRESS["version"])


def colab_url(notebook: Path, repository: str = ADDRESS["repository"],
              version: str = ADDRESS["version"]) -> str:
    """The Open-in-Colab address of a notebook of the course repository on GitHub, at a version."""
    github_path = repository.removeprefix("https://github.com/").removesuffix(".git")
    folder = "notebooks/solutions" if notebook.parent.name == "solutions" else "notebooks"
    return (f"https://colab.research.google.com/github/{github_path}/blob/{version}/"
            f"{folder}/{notebook.name}")


def badge(notebook: Path, repository: str = ADDRESS["repository"],
          version: str = ADDRESS["version"]) -> str:
    """The markdown line with the Open-in-Colab badge."""
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook, repository, version)})")


def notebook_paths() -> list[Path]:
    """The course notebooks, in order."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def solution_paths() -> list[Path]:
    """The solutions notebooks (NN_name_solutions.ipynb), in order."""
    return sorted(SOLUTIONS.glob("*.ipynb"))


def all_notebooks() -> list[Path]:
    """Every committed notebook: the stages, then their solutions."""
    return notebook_paths() + solution_paths()


def find_notebook(name: str) -> Path:
    """A notebook by file name, in notebooks/ or notebooks/solutions/."""
    for folder in (NOTEBOOKS, SOLUTIONS):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"no notebook {name!r} in notebooks/ or notebooks/solutions/")


def source(cell: dict) -> str:
    """A cell's text, whether stored as one string or as a list of lines."""
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def sync(path: Path, repository: str = ADDRESS["repository"],
         version: str = ADDRESS["version"]) -> bool:
    """Stamp the badge and setup cell of a published address into one notebook; True if it
    changed."""
    nb = json.loads(path.read_text())
    title_cell, setup = nb["cells"][0], nb["cells"][1]
    lines = [line for line in source(title_cell).splitlines() if "colab-badge.svg" not in line]
    while len(lines) > 1 and not lines[1].strip():
        del lines[1]
    # splitlines() drops it: keep the cell as it was
    ending = "\n" if source(title_cell).endswith("\n") else ""
    # badge under the title
    new_title = ("\n".join([lines[0], "", badge(path, repository, version), "", *lines[1:]])
                 + ending)
    new_setup = setup_cell(repository, version)
    changed = source(title_cell) != new_title or source(setup) != new_setup
    # as Jupyter stores it
    title_cell["source"], setup["source"] = new_title.splitlines(True), new_setup.splitlines(True)
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


def publish(repository: str, version: str, paths: list[Path]) -> list[Path]:
    """Record where the course is published (course_address.json) and stamp it into the
    notebooks."""
    if not re.match(r"^(https://|git@|file://)", repository):
        raise ValueError(f"{repository!r} is not a repository address: "
                         f"give https://github.com/OWNER/NAME")
    if version in ("main", "master", "HEAD"):
        raise ValueError(f"{version!r} is a moving branch: give a tag (e.g. v1.0) or a commit, "
                         "so that a notebook opened next term runs the helpers its outputs were "
                         "made with")
    ADDRESS_FILE.write_text(json.dumps({"repository": repository, "version": version}, indent=1)
                            + "\n")
    return [path for path in paths if sync(path, repository, version)]


def build_archive(output: Path) -> Path:
    """The committed course as fashion-mnist-cnn.zip (what git holds at HEAD), for Colab without
    git access."""
    made = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=zip",
                           "--prefix=fashion-mnist-cnn/", "--output", str(output.resolve()),
                           "HEAD"], capture_output=True, text=True)
    if made.returncode != 0:
        raise ValueError(f"no archive: {made.stderr.strip()} "
                         f"(archive packs what git holds at HEAD in a checkout)")
    return output


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(/(home|root|work|tmp|Users|content/drive)/|[A-Z]:\\\\)")
# Colab's Google Drive mount point: fine in code, never in an output
DRIVE_MOUNT = '"/content/drive'


def lint(path: Path) -> list[str]:
    """What is wrong with a committed notebook (an empty list when nothing is)."""
    problems = []
    if not NAME_PATTERN.match(path.name):
        problems.append("name is not NN_words.ipynb")
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != "python3":
        problems.append("kernelspec is not python3")
    if len(cells) < 2 or cells[0]["cell_type"] != "markdown" or badge(path) not in source(cells[0]):
        problems.append("first cell is not the title with this notebook's Open-in-Colab badge")
    if len(cells) < 2 or cells[1]["cell_type"] != "code" or source(cells[1]) != SETUP_CELL:
        problems.append("second cell is not the setup cell (run: python -m machinery.tools sync)")
    code = [c for c in cells if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    if counts != list(range(1, len(code) + 1)):
        problems.append(f"execution counts are not 1..{len(code)} in order: re-run top to bottom")
    for i, cell in enumerate(cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i} holds an error output")
        text = (source(cell).replace(DRIVE_MOUNT, '"')
                + json.dumps([o for o in cell.get("outputs", [])
                              if "text" in o or "data" in o and "text/plain" in o["data"]]))
        if ABSOLUTE_PATH.search(text.replace(ADDRESS["repository"], "")):
            problems.append(f"cell {i} holds an absolute local path")
    return problems


def execute(paths: list[Path]) -> None:
    """Re-run notebooks top to bottom in place, in full mode, in the notebooks' folder."""
    env = {k: v for k, v in os.environ.items() if k != "FMNIST_SMOKE"}
    # %tensorboard looks for the `tensorboard` program on PATH: the one beside this Python
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TQDM_DISABLE"] = "1"  # stored outputs hold the epoch lines, not progress bars
    # no live TensorBoard frame: stored, it is a blank box on GitHub
    env["FMNIST_STORING_OUTPUTS"] = "1"
    for path in paths:
        print(f"executing {path.name} ...", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook",
                            "--execute", "--inplace", "--ExecutePreprocessor.timeout=-1",
                            str(path)], check=True, env=env)
        finally:
            stop_tensorboard_servers()


def stop_tensorboard_servers() -> None:
    """Stop the TensorBoard servers a notebook's %tensorboard cell started (they outlive the
    kernel)."""
    from tensorboard import manager
    runs = str(REPO_ROOT / "runs")
    for info in manager.get_all():
        if runs in info.logdir:
            try:
                os.kill(info.pid, signal.SIGTERM)
                print(f"stopped TensorBoard server {info.pid} (port {info.port})")
            except ProcessLookupError:
                pass


