"""The notebooks: lint rules, and the setup cell in Colab (offline) and locally."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from machinery import basics as course_basics
from machinery.tools import notebooks as course_notebooks

NOTEBOOKS = course_notebooks.notebook_paths()
SOLUTIONS = course_notebooks.solution_paths()


def test_notebooks_are_numbered_in_order():
    numbers = [int(course_notebooks.NAME_PATTERN.match(p.name).group(1)) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(NOTEBOOKS) + 1))


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=[p.name for p in NOTEBOOKS + SOLUTIONS])
def test_notebook_lint(path):
    assert course_notebooks.lint(path) == []


def markdown_text(path: Path) -> str:
    """A notebook's markdown cells, one after the other (a newline between cells)."""
    cells = json.loads(path.read_text())["cells"]
    return "\n".join(course_notebooks.source(c) for c in cells if c["cell_type"] == "markdown")


def code_sources(path: Path) -> list[str]:
    """A notebook's code cells, as text, in order."""
    cells = json.loads(path.read_text())["cells"]
    return [course_notebooks.source(c) for c in cells if c["cell_type"] == "code"]


def try_this_items(path: Path) -> list[int]:
    """The numbers of the exercises under a notebook's **Try this** heading."""
    exercises = markdown_text(path).partition("**Try this**")[2].partition("\nNext:")[0]
    return [int(n) for n in re.findall(r"^(\d+)\. ", exercises, flags=re.MULTILINE)]


def solved_items(path: Path) -> list[int]:
    """The numbers of the `## Try this N` sections of a solutions notebook."""
    return [int(n) for n in re.findall(r"^## Try this (\d+)\b", markdown_text(path),
                                       flags=re.MULTILINE)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_try_this_has_a_worked_solution(path):
    items = try_this_items(path)
    solution = course_notebooks.SOLUTIONS / path.name.replace(".ipynb", "_solutions.ipynb")
    assert items, f"{path.name} has no numbered Try this exercises"
    assert solution.is_file(), \
        f"no worked solutions for {path.name}: write {solution.relative_to(helpers.REPO_ROOT)}"
    assert solved_items(solution) == items


def stored_tensorboard_frames(path: Path) -> list[int]:
    """The cells whose stored output is a TensorBoard dashboard frame (a blank box once stored)."""
    cells = json.loads(path.read_text())["cells"]
    return [i for i, cell in enumerate(cells) for out in cell.get("outputs", [])
            if "tensorboard-frame" in "".join(out.get("data", {}).get("text/html", ""))]


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=[p.name for p in NOTEBOOKS + SOLUTIONS])
def test_no_notebook_stores_a_dead_tensorboard_frame(path):
    assert stored_tensorboard_frames(path) == [], "re-run it with python -m machinery.tools execute"


def test_execute_tells_the_notebook_it_is_storing_outputs(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(course_notebooks.subprocess, "run",
                        lambda cmd, check, env: seen.update(env))
    monkeypatch.setattr(course_notebooks, "stop_tensorboard_servers", lambda: None)
    monkeypatch.setenv("FMNIST_SMOKE", "1")
    course_notebooks.execute([tmp_path / "01_x.ipynb"])
    assert seen["FMNIST_STORING_OUTPUTS"] == "1" and "FMNIST_SMOKE" not in seen
    monkeypatch.setenv("FMNIST_STORING_OUTPUTS", "1")
    assert course_basics.storing_outputs()
    monkeypatch.delenv("FMNIST_STORING_OUTPUTS")
    assert not course_basics.storing_outputs()


def test_a_solutions_notebook_opens_in_colab_from_its_own_folder():
    url = course_notebooks.colab_url(course_notebooks.SOLUTIONS / "01_load_data_solutions.ipynb")
    assert url.endswith(f"/blob/{course_notebooks.ADDRESS['version']}"
                        "/notebooks/solutions/01_load_data_solutions.ipynb")


def test_lint_catches_what_it_should(tmp_path):
    broken = tmp_path / "notebooks" / "1_bad.ipynb"
    broken.parent.mkdir()
    shutil.copy(NOTEBOOKS[0], broken)
    text = broken.read_text().replace('"execution_count": 2', '"execution_count": 7', 1)
    nb = json.loads(text.replace("{machine()}", "{machine() + '/home/me/x'}"))
    prose = next(cell for cell in nb["cells"][2:] if cell["cell_type"] == "markdown")
    prose["source"].append("\n" + "a widened line " * 7)  # 105 characters
    broken.write_text(json.dumps(nb))
    original_root = course_notebooks.REPO_ROOT
    try:
        course_notebooks.REPO_ROOT = tmp_path
        problems = course_notebooks.lint(broken)
    finally:
        course_notebooks.REPO_ROOT = original_root
    assert any("name" in p for p in problems)
    assert any("execution counts" in p for p in problems)
    assert any("absolute local path" in p for p in problems)
    assert any("1 line(s) over 100 characters" in p for p in problems)


def run_setup_cell(cwd: Path, repository: str = "file:///nonexistent", version: str = "v-test",
                   pythonpath: list[Path] = (), load: bool = False) -> subprocess.CompletedProcess:
    """Run the notebooks' setup cell, published at `repository` and `version`, in a fresh IPython
    (its `!` line is IPython's), then report the helpers.py that `import helpers` finds there --
    with load=True by importing it (torch and all: seconds), else by the same path search alone.

    With a stand-in google.colab on the pythonpath, it is imported first, as Colab's kernel does.
    """
    colab = "import google.colab\n" if pythonpath else ""
    where = ("import helpers\nfound = helpers.__file__" if load
             else "import importlib.util\nfound = importlib.util.find_spec('helpers').origin")
    script = (colab + course_notebooks.setup_cell(repository, version)
              + f"\n{where}\nimport pathlib\nprint(pathlib.Path(found).resolve())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    return subprocess.run([sys.executable, "-m", "IPython", "--quick", "--colors=NoColor", "-c",
                           script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def course_origin(tmp_path: Path) -> tuple[Path, str]:
    """A stand-in for the course repository on GitHub: the course tagged v-test, then a later commit
    on main that breaks helpers.py -- so a notebook that fetched main instead of its tag would
    fail."""
    origin = tmp_path / "origin"
    origin.mkdir()
    shutil.copy(helpers.REPO_ROOT / "helpers.py", origin / "helpers.py")
    shutil.copytree(helpers.REPO_ROOT / "machinery", origin / "machinery",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(helpers.REPO_ROOT / "notebooks", origin / "notebooks",
                    ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-C", str(origin)]
    subprocess.run(git[:-2] + ["init", "--quiet", "--initial-branch=main", str(origin)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "--quiet", "-m", "course"], check=True)
    subprocess.run(git + ["tag", "v-test"], check=True)
    tagged = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    (origin / "helpers.py").write_text("raise ImportError('the moving branch, "
                                       "not the version asked for')\n")
    subprocess.run(git + ["commit", "--quiet", "-am", "later"], check=True)
    return origin, tagged


def fake_colab(tmp_path: Path) -> tuple[list[Path], Path]:
    """A stand-in for Colab: the google.colab module exists, and /content is an empty folder."""
    fake = tmp_path / "site" / "google" / "colab"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    content = tmp_path / "content"
    content.mkdir()
    return [tmp_path / "site"], content


@pytest.mark.whole_checkout
def test_setup_cell_in_colab_fetches_the_notebooks_version_offline(tmp_path):
    origin, _ = course_origin(tmp_path)
    site, content = fake_colab(tmp_path)
    result = run_setup_cell(content, origin.as_uri(), "v-test", site)
    assert result.returncode == 0, result.stderr
    found = Path(result.stdout.split()[-1])
    assert found == content / "fashion-mnist-cnn" / "helpers.py"
    # the tagged helpers.py, not the later commit's on main
    assert found.read_bytes() == (helpers.REPO_ROOT / "helpers.py").read_bytes()
    # Running the cell again (Colab re-runs it) must not fetch a second time.
    again = run_setup_cell(content, "file:///nonexistent", "v-test", site)
    assert again.returncode == 0, again.stderr


def test_setup_cell_says_in_one_line_what_to_do_when_the_course_cannot_be_fetched(tmp_path):
    site, content = fake_colab(tmp_path)
    result = run_setup_cell(content, (tmp_path / "nowhere").as_uri(), "v-test", site)
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0
    # In Jupyter (IPython), the error is that one line, not a traceback, nor git's or unzip's own.
    assert output == ["UsageError: course not found: upload fashion-mnist-cnn.zip, run again"]
    # no half-made folder to trip the next attempt
    assert not (content / "fashion-mnist-cnn").exists()


@pytest.mark.whole_checkout
def test_setup_cell_in_colab_unpacks_the_course_archive(tmp_path):
    site, content = fake_colab(tmp_path)
    course_notebooks.build_archive(content / course_notebooks.ARCHIVE_NAME)  # what `archive` builds
    # no repository at all; the archive's code imports (torch and all)
    result = run_setup_cell(content, "file:///nonexistent", "v-test", site, load=True)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.split()[-1]) == content / "fashion-mnist-cnn" / "helpers.py"


def test_the_setup_cell_is_short_folded_and_introduced(tmp_path):
    """At most 8 lines, none over 100 characters; folded to its title in Colab and hidden in
    JupyterLab by `sync`, with the sentence that introduces it at the end of the title cell."""
    lines = course_notebooks.SETUP_CELL.splitlines()
    assert len(lines) <= 8 and max(map(len, lines)) <= 100
    assert lines[0].startswith("# @title ") and 'display-mode: "form"' in lines[0]
    copy = tmp_path / NOTEBOOKS[0].name
    notebook = json.loads(NOTEBOOKS[0].read_text())
    notebook["cells"][1]["metadata"] = {}
    copy.write_text(json.dumps(notebook))
    assert any("folded" in p for p in course_notebooks.lint(copy))
    assert course_notebooks.sync(copy)
    setup = json.loads(copy.read_text())["cells"][1]
    assert setup["metadata"]["cellView"] == "form"
    assert setup["metadata"]["jupyter"]["source_hidden"] is True
    title = course_notebooks.source(json.loads(copy.read_text())["cells"][0])
    assert title.rstrip().endswith(course_notebooks.setup_sentence(
        course_notebooks.ADDRESS["version"]))
    assert not course_notebooks.sync(copy)  # stamping twice changes nothing


def test_publish_stamps_the_address_into_every_badge_and_setup_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(course_notebooks, "ADDRESS_FILE", tmp_path / "course_address.json")
    copies = []
    for path in NOTEBOOKS[:2]:
        copies.append(tmp_path / path.name)
        shutil.copy(path, copies[-1])
    changed = course_notebooks.publish("https://github.com/my-school/fmnist.git", "term-2027",
                                       copies)
    assert changed == copies
    assert json.loads((tmp_path / "course_address.json").read_text()) == {
        "repository": "https://github.com/my-school/fmnist.git", "version": "term-2027"}
    for path in copies:
        cells = json.loads(path.read_text())["cells"]
        title, setup = "".join(cells[0]["source"]), "".join(cells[1]["source"])
        assert ("colab.research.google.com/github/my-school/fmnist/blob/term-2027/notebooks/"
                f"{path.name}" in title)
        assert "-b term-2027 https://github.com/my-school/fmnist.git fashion-mnist-cnn" in setup
        assert "at term-2027, the version of this notebook" in title
    assert course_notebooks.publish("https://github.com/my-school/fmnist.git", "term-2027",
                                    copies) == []
    for bad in (("https://github.com/my-school/fmnist.git", "main"), ("my-school/fmnist", "v1"),
                ("https://github.com/my-school/fmnist.git", "2bec232")):
        with pytest.raises(ValueError):
            course_notebooks.publish(*bad, copies)


def test_the_course_is_published_at_a_fixed_version():
    assert course_notebooks.ADDRESS["version"] not in ("main", "master", "HEAD")


@pytest.mark.whole_checkout
def test_setup_cell_locally_finds_the_repository_root(tmp_path):
    for cwd in (helpers.REPO_ROOT / "notebooks", helpers.REPO_ROOT / "notebooks" / "solutions",
                helpers.REPO_ROOT):
        result = run_setup_cell(cwd)
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.split()[-1]) == helpers.REPO_ROOT / "helpers.py"
    lost = run_setup_cell(tmp_path)
    assert lost.returncode != 0 and "UsageError: course not found" in lost.stderr


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=[p.name for p in NOTEBOOKS + SOLUTIONS])
def test_every_drive_folder_is_the_one_stages_7_to_9_look_in(path):
    """A checkpoint folder on Drive other than DRIVE_CHECKPOINTS' would never be found by stages
    7-9."""
    folders = set(re.findall(r"MyDrive/([^/\"'\s]+)/", "\n".join(code_sources(path))))
    assert folders <= {course_basics.DRIVE_CHECKPOINTS.parent.name}, \
        f"use machinery.colab.checkpoint_folder(True) instead of a Drive path of its own: {folders}"


# Stages whose only training is a demonstration of seconds on a few hundred images (their recipes
# set train_size): a runtime note would announce the full recipe's hour for nothing.
SMALL_DEMOS = {"09_save_load.ipynb", "09_save_load_solutions.ipynb"}
# Stages whose training is sized for a 2-core CPU (the baseline ladder: nine runs of 10,000 images,
# minutes): a GPU would save a student little and cost their free quota.
CPU_SIZED = {"08_evaluate.ipynb", "08_evaluate_solutions.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_a_stage_that_trains_a_recipe_checks_the_runtime_first(path):
    """Without a GPU a student should hear what the training costs before it starts, not after."""
    cells = code_sources(path)
    if path.name in SMALL_DEMOS:
        recipes = re.findall(r"course_recipe\(([^)]*)\)", "\n".join(cells))
        assert any("train_size=" in arguments for arguments in recipes), path.name
        return
    trains = [i for i, code in enumerate(cells)
              if re.search(r"\b(train_run|SummaryWriter)\(", code)]
    checks = [i for i, code in enumerate(cells) if "runtime_note(" in code]
    if trains:
        assert checks and checks[0] < trains[0], \
            f"{path.name} trains without printing runtime_note(device) first"


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=[p.name for p in NOTEBOOKS + SOLUTIONS])
def test_a_notebook_that_loads_your_checkpoint_has_stage_6s_drive_switch(path):
    """On a fresh runtime Drive is unmounted: a checkpoint kept there is found only by a notebook
    that mounts it, as KEEP_ON_DRIVE asks (False until the student sets it, as in stage 6)."""
    code = "\n".join(code_sources(path))
    calls = re.findall(r"course_checkpoint\(([^)]*)\)", code)
    if calls:
        assert "KEEP_ON_DRIVE = False  #" in code, path.name
        assert all(arguments.endswith(", KEEP_ON_DRIVE") for arguments in calls), (path.name, calls)


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=[p.name for p in NOTEBOOKS + SOLUTIONS])
def test_only_a_notebook_that_trains_asks_colab_for_a_gpu(path):
    """Colab opens a notebook whose metadata asks for a GPU on one, from the student's free quota:
    only those that train with the course's loop or runner (beyond a small demo) ask, for a T4."""
    trains = path.name not in SMALL_DEMOS | CPU_SIZED and any(
        re.search(r"\b(train_one_epoch|fit|train_run)\(", code) for code in code_sources(path))
    metadata = json.loads(path.read_text())["metadata"]
    asks = {"accelerator": metadata.get("accelerator"),
            "gpuType": metadata.get("colab", {}).get("gpuType")}
    assert asks == ({"accelerator": "GPU", "gpuType": "T4"} if trains
                    else {"accelerator": None, "gpuType": None}), path.name


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=[p.name for p in NOTEBOOKS + SOLUTIONS])
def test_sync_leaves_a_stamped_notebook_as_committed(path, tmp_path):
    """`sync` at the recorded address rewrites nothing: running it never dirties a clean
    checkout."""
    # notebooks/ or solutions/: the badge names the folder
    copy = tmp_path / path.parent.name / path.name
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert course_notebooks.sync(copy) is False and copy.read_bytes() == path.read_bytes()


# what a notebook writes out in full and helpers.py holds too, for the later stages to call
TAUGHT = {"06_train.ipynb": ("train_one_epoch", "evaluate", "EarlyStopping", "fit"),
          "07_predict.ipynb": ("feature_maps", "occlusion_map"),
          "08_evaluate.ipynb": ("sign_test",),
          "10_improvements.ipynb": ("compare_seeds",)}


def top_level_definitions(code: str, names: tuple[str, ...]) -> list:
    """The top-level functions and classes `names` in Python code, as AST nodes (a notebook
    cell's IPython magics turned into Python first)."""
    import ast

    from IPython.core.inputtransformer2 import TransformerManager
    return [node for node in ast.parse(TransformerManager().transform_cell(code)).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names]


def definitions(code: str, names: tuple[str, ...]) -> dict[str, str]:
    """The top-level functions and classes `names` in Python code, as AST dumps without type
    hints."""
    import ast
    found = {}
    for node in top_level_definitions(code, names):
        for inner in ast.walk(node):
            if isinstance(inner, ast.arg):
                inner.annotation = None
            if isinstance(inner, ast.FunctionDef):
                inner.returns = None
        found[node.name] = ast.dump(node)
    return found


@pytest.mark.whole_checkout
@pytest.mark.parametrize("notebook", sorted(TAUGHT))
def test_a_notebook_writes_the_code_helpers_runs(notebook):
    """The loop a student writes in notebook 6 is the loop helpers.fit runs, notebook 7's hooks
    are helpers.feature_maps and notebook 8's sign test is helpers.sign_test: same code, type
    hints aside."""
    names = TAUGHT[notebook]
    written = definitions(
        "\n\n".join(code_sources(course_notebooks.find_notebook(notebook))), names)
    course = definitions((helpers.REPO_ROOT / "helpers.py").read_text(), names)
    assert sorted(written) == sorted(course) == sorted(names)
    differ = [name for name in names if written[name] != course[name]]
    assert not differ, f"{notebook} and helpers.py differ in {differ}: change both alike"


@pytest.mark.whole_checkout
def test_notebook_10_writes_out_the_residual_block_and_flip_the_runner_uses():
    """Notebook 10 writes a residual block and flip TTA itself (its runner's are in machinery):
    given the same weights, each computes what the course's computes."""
    import ast

    import torch

    from machinery import engine, networks
    code = "\n\n".join(code_sources(course_notebooks.find_notebook("10_improvements.ipynb")))
    written = top_level_definitions(code, ("conv_bn_relu", "ResidualBlock", "FlipTTA"))
    assert sorted(node.name for node in written) == ["FlipTTA", "ResidualBlock", "conv_bn_relu"]
    notebook = {"torch": torch, "nn": torch.nn}
    exec(compile(ast.Module(written, type_ignores=[]), "notebook 10", "exec"), notebook)
    torch.manual_seed(0)
    course_block = networks.ResidualBlock(8)
    for module in course_block.modules():  # BatchNorm's running statistics: not the defaults
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    block = notebook["ResidualBlock"](8)
    block.load_state_dict(course_block.state_dict())
    features = torch.randn(2, 8, 6, 6)
    network = helpers.build_model("original").eval()
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(block.eval()(features), course_block.eval()(features))
        flipped = notebook["FlipTTA"](network)(images)
        assert torch.allclose(flipped, engine.FlipTTA(network)(images))
        assert not torch.allclose(flipped, network(images))  # the mirror images count


def test_the_code_comparison_sees_a_changed_line():
    code = "def fit(model, epochs: int) -> None:\n    return model\n"
    assert definitions(code, ("fit",)) == definitions(code.replace(": int", ""), ("fit",))
    assert definitions(code, ("fit",)) != definitions(code.replace("model\n", "epochs\n"), ("fit",))


def prose(name: str) -> str:
    """A notebook's markdown as one line of words."""
    cells = json.loads(course_notebooks.find_notebook(name).read_text())["cells"]
    return " ".join(" ".join(course_notebooks.source(cell) for cell in cells
                             if cell["cell_type"] == "markdown").split())


@pytest.mark.whole_checkout
def test_figures_quoted_from_notebook_10s_stored_run_are_the_ones_it_printed():
    """Notebooks 4 and 8 quote notebook 10's three evaluations with the dropout bug: when
    notebook 10 is run again, their prose must follow its new outputs."""
    outputs = course_notebooks.stored_text(course_notebooks.find_notebook("10_improvements.ipynb"))
    evaluations = re.findall(r"with the bug, evaluation \d: validation accuracy ([\d.]+%)\s+"
                             r"breaks (\d+) images, fixes (\d+)", outputs)
    assert len(evaluations) == 3, "notebook 10 stores no run of the dropout bug"
    stage4 = prose("04_model.ipynb")
    changed = [str(int(breaks) + int(fixes)) for _, breaks, fixes in evaluations]
    assert f"{changed[0]}, {changed[1]} and {changed[2]} of the 10,000" in stage4
    broken = [breaks for _, breaks, _ in evaluations]
    assert f"{broken[0]}, {broken[1]} and {broken[2]} of them from right to wrong" in stage4
    stage8 = prose("08_evaluate.ipynb")
    accuracies = [accuracy for accuracy, _, _ in evaluations]
    assert f"{accuracies[0]}, {accuracies[1]} and {accuracies[2]} on the validation" in stage8
