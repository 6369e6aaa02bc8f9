"""The notebooks: lint rules, and the setup cell in Colab (offline) and locally."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from machinery.tools import notebooks as course_notebooks

NOTEBOOKS = course_notebooks.notebook_paths()


def test_notebooks_are_numbered_in_order():
    numbers = [int(course_notebooks.NAME_PATTERN.match(p.name).group(1)) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(NOTEBOOKS) + 1))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_lint(path):
    assert course_notebooks.lint(path) == []


def test_lint_catches_what_it_should(tmp_path):
    broken = tmp_path / "notebooks" / "1_bad.ipynb"
    broken.parent.mkdir()
    shutil.copy(NOTEBOOKS[0], broken)
    text = broken.read_text().replace('"execution_count": 2', '"execution_count": 7', 1)
    broken.write_text(text.replace("{machine()}", "{machine() + '/home/me/x'}"))
    original_root = course_notebooks.REPO_ROOT
    try:
        course_notebooks.REPO_ROOT = tmp_path
        problems = course_notebooks.lint(broken)
    finally:
        course_notebooks.REPO_ROOT = original_root
    assert any("name" in p for p in problems)
    assert any("execution counts" in p for p in problems)
    assert any("absolute local path" in p for p in problems)


def run_setup_cell(cwd: Path, env: dict, pythonpath: list[Path] = ()) -> subprocess.CompletedProcess:
    """Run the notebooks' setup cell in a fresh Python, then report where helpers came from.

    With a stand-in google.colab on the pythonpath, it is imported first, as Colab's kernel does.
    """
    colab = "import google.colab\n" if pythonpath else ""
    script = colab + course_notebooks.SETUP_CELL + "\nimport helpers\nprint(Path(helpers.__file__).resolve())\nprint(Path.cwd())"
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_setup_cell_in_colab_fetches_the_course_offline(tmp_path):
    # A stand-in for the course repository on GitHub: a local git repository with a main branch.
    origin = tmp_path / "origin"
    origin.mkdir()
    shutil.copy(helpers.REPO_ROOT / "helpers.py", origin / "helpers.py")
    shutil.copytree(helpers.REPO_ROOT / "machinery", origin / "machinery", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(helpers.REPO_ROOT / "notebooks", origin / "notebooks",
                    ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-C", str(origin)]
    subprocess.run(git[:-2] + ["init", "--quiet", "--initial-branch=main", str(origin)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "--quiet", "-m", "course"], check=True)
    # A stand-in for Colab: the google.colab module exists, the notebook's folder is empty.
    fake = tmp_path / "site" / "google" / "colab"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    content = tmp_path / "content"
    content.mkdir()
    result = run_setup_cell(content, {"FMNIST_COURSE_REPO": origin.as_uri()}, [tmp_path / "site"])
    assert result.returncode == 0, result.stderr
    helpers_file, cwd = result.stdout.split()
    assert Path(helpers_file) == content / "fashion-mnist-cnn" / "helpers.py"
    assert Path(cwd) == content / "fashion-mnist-cnn" / "notebooks"
    # Running the cell again (Colab re-runs it) must not clone a second time.
    again = run_setup_cell(content, {"FMNIST_COURSE_REPO": "file:///nonexistent"}, [tmp_path / "site"])
    assert again.returncode == 0, again.stderr


def test_setup_cell_locally_finds_the_repository_root(tmp_path):
    for cwd in (helpers.REPO_ROOT / "notebooks", helpers.REPO_ROOT):
        result = run_setup_cell(cwd, {})
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.split()[0]) == helpers.REPO_ROOT / "helpers.py"
    lost = run_setup_cell(tmp_path, {})
    assert lost.returncode != 0 and "helpers.py not found" in lost.stderr
