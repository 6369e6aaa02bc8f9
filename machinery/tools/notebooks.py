"""The notebooks as an instructor handles them: the Colab badge and setup cell stamped into each
one (`sync`), the rules a committed notebook must meet (`lint`), and a full re-run (`execute`).

The course repository's address lives here, in REPO_URL, and nowhere else.
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
REPO_URL = "https://github.com/fmnist-course/fashion-mnist-cnn"  # the one place it is written
REPO_REF = "main"  # the branch or tag these notebooks belong to: Colab fetches helpers.py from it
NAME_PATTERN = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")

SETUP_CELL = f'''\
# Setup: make the course's helpers.py importable, in Colab and in Jupyter alike.
import os, subprocess, sys, time
from pathlib import Path

notebook_start = time.perf_counter()
COURSE_REPO = os.environ.get("FMNIST_COURSE_REPO", "{REPO_URL}.git")
COURSE_REF = "{REPO_REF}"  # the version of the course this notebook belongs to

def find_course_root():
    return next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "helpers.py").is_file()), None)

if find_course_root() is None and "google.colab" in sys.modules:
    # Colab opens a notebook on its own: fetch the course next to it, at the matching version.
    # torch, torchvision, tensorboard and numpy are already installed there, so nothing is reinstalled.
    if not Path("fashion-mnist-cnn").is_dir():
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", COURSE_REF,
                        COURSE_REPO, "fashion-mnist-cnn"], check=True)
    os.chdir("fashion-mnist-cnn/notebooks")
COURSE_ROOT = find_course_root()
if COURSE_ROOT is None:
    raise RuntimeError("helpers.py not found: open this notebook from the course's notebooks/ folder")
sys.path.insert(0, str(COURSE_ROOT))'''


def colab_url(notebook: Path) -> str:
    """The Open-in-Colab address of a notebook in the course repository."""
    path = notebook.resolve().relative_to(REPO_ROOT).as_posix()
    return f"https://colab.research.google.com/github/{REPO_URL.removeprefix('https://github.com/')}/blob/{REPO_REF}/{path}"


def badge(notebook: Path) -> str:
    """The markdown line with the Open-in-Colab badge."""
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook)})")


def notebook_paths() -> list[Path]:
    """The course notebooks, in order."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def source(cell: dict) -> str:
    """A cell's text, whether stored as one string or as a list of lines."""
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def sync(path: Path) -> bool:
    """Stamp the current badge and setup cell into one notebook; True if it changed."""
    nb = json.loads(path.read_text())
    title_cell, setup = nb["cells"][0], nb["cells"][1]
    lines = [line for line in source(title_cell).splitlines() if "colab-badge.svg" not in line]
    while len(lines) > 1 and not lines[1].strip():
        del lines[1]
    new_title = "\n".join([lines[0], "", badge(path), "", *lines[1:]])  # badge under the title
    changed = source(title_cell) != new_title or source(setup) != SETUP_CELL
    title_cell["source"], setup["source"] = new_title, SETUP_CELL
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(/(home|root|work|tmp|Users|content/drive)/|[A-Z]:\\\\)")
DRIVE_MOUNT = '"/content/drive'  # Colab's Google Drive mount point: fine in code, never in an output


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
        text = source(cell).replace(DRIVE_MOUNT, '"') + json.dumps([o for o in cell.get("outputs", []) if "text" in o or "data" in o
                                          and "text/plain" in o["data"]])
        if ABSOLUTE_PATH.search(text.replace(REPO_URL, "")):
            problems.append(f"cell {i} holds an absolute local path")
    return problems


def execute(paths: list[Path]) -> None:
    """Re-run notebooks top to bottom in place, in full mode, in the notebooks' folder."""
    env = {k: v for k, v in os.environ.items() if k != "FMNIST_SMOKE"}
    # %tensorboard looks for the `tensorboard` program on PATH: the one beside this Python
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for path in paths:
        print(f"executing {path.name} ...", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                            "--inplace", "--ExecutePreprocessor.timeout=-1", str(path)], check=True, env=env)
        finally:
            stop_tensorboard_servers()


def stop_tensorboard_servers() -> None:
    """Stop the TensorBoard servers a notebook's %tensorboard cell started (they outlive the kernel)."""
    from tensorboard import manager
    runs = str(REPO_ROOT / "runs")
    for info in manager.get_all():
        if runs in info.logdir:
            try:
                os.kill(info.pid, signal.SIGTERM)
                print(f"stopped TensorBoard server {info.pid} (port {info.port})")
            except ProcessLookupError:
                pass


