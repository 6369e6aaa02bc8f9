"""The notebooks as an instructor handles them: the Colab badge and setup cell stamped into each
one (`sync`), the rules a committed notebook must meet (`lint`), and a full re-run (`execute`).

Where the course is published -- the repository's address and the version (a tag) --
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
import textwrap
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


COURSE_FOLDER = "fashion-mnist-cnn"  # where Colab's setup cell puts the course, as the archive does


def setup_cell(repository: str, version: str) -> str:
    """The first code cell of every notebook: helpers.py importable in Colab and in Jupyter
    alike."""
    # At most 8 lines (a beginner's first sight of the course), so the error is IPython's
    # UsageError, which Jupyter and Colab print as one line; `sync` copies it into every notebook.
    # The archive first (a class without a public repository); git never prompts for a password.
    return f'''\
# @title Setup: run this cell first {{ display-mode: "form" }}
import os, sys, IPython.core.error  # IPython prints its UsageError as one line, not a traceback
if "google.colab" in sys.modules and not os.path.isdir("{COURSE_FOLDER}"):  # fetch the course
    !unzip -q {ARCHIVE_NAME} 2>/dev/null || GIT_TERMINAL_PROMPT=0 git clone -q --depth 1 \\
        -b {version} {repository} {COURSE_FOLDER} 2>/dev/null
sys.path[:0] = [os.path.abspath(p) for p in (".", "..", "../..", "{COURSE_FOLDER}")]
if not any(os.path.isfile(f"{{p}}/helpers.py") for p in sys.path[:4]):
    raise IPython.core.error.UsageError("course not found: upload {ARCHIVE_NAME}, run again")'''


# Colab shows the cell as a titled form (its code folded away); JupyterLab hides its source.
SETUP_METADATA = {"cellView": "form", "jupyter": {"source_hidden": True}}


SETUP_SENTENCE_START = "Run the setup cell below first:"


def setup_sentence(version: str) -> str:
    """The sentence that introduces the setup cell: the last paragraph of each title cell."""
    return textwrap.fill(
        f"{SETUP_SENTENCE_START} in Colab it fetches the course's code (`helpers.py` and the "
        f"package beside it) at {version}, the version of this notebook, or unpacks "
        f"`{ARCHIVE_NAME}` if you uploaded the course's archive to the Files panel; in Jupyter "
        f"it finds the code in the folders above.", width=100)


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
    # the title cell as written: without its badge and the sentence about the setup cell
    written = source(title_cell).split(SETUP_SENTENCE_START)[0]
    lines = [line for line in written.splitlines() if "colab-badge.svg" not in line]
    while len(lines) > 1 and not lines[1].strip():
        del lines[1]
    while lines and not lines[-1].strip():
        del lines[-1]
    # splitlines() drops it: keep the cell as it was
    ending = "\n" if source(title_cell).endswith("\n") else ""
    # badge under the title, the sentence that introduces the setup cell last
    new_title = ("\n".join([lines[0], "", badge(path, repository, version), "", *lines[1:], "",
                            setup_sentence(version)]) + ending)
    new_setup = setup_cell(repository, version)
    changed = (source(title_cell) != new_title or source(setup) != new_setup
               or any(setup.get("metadata", {}).get(k) != v for k, v in SETUP_METADATA.items()))
    # as Jupyter stores it
    title_cell["source"], setup["source"] = new_title.splitlines(True), new_setup.splitlines(True)
    setup.setdefault("metadata", {}).update(SETUP_METADATA)
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
        raise ValueError(f"{version!r} is a moving branch: give a tag (e.g. v1.0), so that a "
                         "notebook opened next term runs the helpers its outputs were made with")
    if re.fullmatch(r"[0-9a-f]{7,40}", version):
        # the setup cell's `git clone --branch` takes a tag, not a commit
        raise ValueError(f"{version!r} looks like a commit: tag it (git tag v1.0 {version}; "
                         "git push origin v1.0) and publish the tag")
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


def stored_text(notebook: Path) -> str:
    """Every text output a notebook stores, in order (what its readers see printed)."""
    cells = json.loads(notebook.read_text())["cells"]
    return "".join("".join(out.get("text", "")) for cell in cells
                   for out in cell.get("outputs", []))


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
    elif any(cells[1].get("metadata", {}).get(k) != v for k, v in SETUP_METADATA.items()):
        problems.append("the setup cell is not folded (run: python -m machinery.tools sync)")
    if cells and not source(cells[0]).rstrip().endswith(setup_sentence(ADDRESS["version"])):
        problems.append("the title cell does not end with the sentence introducing the setup cell")
    code = [c for c in cells if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    if counts != list(range(1, len(code) + 1)):
        problems.append(f"execution counts are not 1..{len(code)} in order: re-run top to bottom")
    for i, cell in enumerate(cells):
        long = [line for line in source(cell).splitlines()
                if len(line) > 100 and "colab-badge" not in line and not line.startswith("|")]
        if long:
            problems.append(f"cell {i}: {len(long)} line(s) over 100 characters")
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


