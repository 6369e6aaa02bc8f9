"""The layout: helpers.py (what the notebooks teach) with machinery layered beneath and above it,
no import cycle anywhere, and `import helpers` loading no runner, command-line or instructor
code."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import helpers

ROOT = helpers.REPO_ROOT
MODULES = {"helpers": ROOT / "helpers.py",
           **{".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
              for p in sorted((ROOT / "machinery").rglob("*.py"))}}
# Where each module sits: a module may import only from its own level or below (never a cycle).
LEVELS = {"machinery": 0, "machinery.basics": 0,
          **dict.fromkeys(["machinery.dataset", "machinery.recipes", "machinery.fast_path",
                           "machinery.checkpoint_file", "machinery.photos", "machinery.figures",
                           "machinery.networks"], 1),
          "machinery.resume": 2, "machinery.tensorboard_log": 2, "machinery.colab": 2,
          "helpers": 3,
          "machinery.engine": 4, "machinery.tensorboard_panels": 4,
          "machinery.runs": 5, "machinery.bench": 5,
          "machinery.cli": 6}


def level(module: str) -> int:
    return 7 if module.startswith("machinery.tools") else LEVELS[module]


def project_imports(module: str, path: Path) -> set[str]:
    """The project modules `module` imports anywhere in its code (inside functions too), except in
    an `if __name__ == "__main__":` block, which runs the file as a program rather than importing
    it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = (package.split(".")[: len(package.split(".")) - node.level + 1]
                     if node.level else [])
            base = ".".join(parts + ([node.module] if node.module else []))
            found.update([base] + [f"{base}.{alias.name}" for alias in node.names])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in MODULES} - {module}


GRAPH = {module: project_imports(module, path) for module, path in MODULES.items()}


def test_every_module_has_a_level():
    assert [m for m in MODULES if m not in LEVELS and not m.startswith("machinery.tools")] == []


def test_modules_import_only_their_own_level_or_below():
    upward = {module: {name: level(name) for name in GRAPH[module] if level(name) > level(module)}
              for module in sorted(MODULES)}
    assert {module: names for module, names in upward.items() if names} == {}, \
        "these modules import higher layers (module: {imported: its level})"


def test_the_level_check_catches_an_upward_import(monkeypatch):
    monkeypatch.setitem(GRAPH, "machinery.recipes", {"machinery.engine"})  # level 1 -> level 4
    with pytest.raises(AssertionError, match="machinery.recipes"):
        test_modules_import_only_their_own_level_or_below()


def test_there_is_no_import_cycle():
    def visit(module, path):
        for name in GRAPH[module]:
            assert name not in path, f"import cycle: {' -> '.join([*path, name])}"
            visit(name, [*path, name])
    for module in GRAPH:
        visit(module, [module])


def test_the_cycle_check_catches_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "machinery.basics", {"helpers"})  # what a careless import would add
    with pytest.raises(AssertionError, match="import cycle"):
        test_there_is_no_import_cycle()


def test_the_level_check_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "fake.py"
    path.write_text("def f():\n    import helpers\n\n"
                    "if __name__ == '__main__':\n    from machinery import cli\n")
    assert project_imports("machinery.fake", path) == {"helpers"}


def test_import_helpers_loads_no_command_line_or_instructor_code():
    code = "import sys, helpers; print(sorted(m for m in sys.modules if m.startswith('machinery')))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=True).stdout
    for name in ("machinery.cli", "machinery.engine", "machinery.runs", "machinery.bench",
                 "machinery.tools"):
        assert f"'{name}" not in loaded, loaded
    assert "'machinery.checkpoint_file'" in loaded  # the check does see what helpers loads


def test_helpers_reads_in_stage_order():
    """Each section's banner names a later stage than the one before it."""
    banners = [line for line in (ROOT / "helpers.py").read_text().splitlines()
               if line.startswith("# ---- Stage")]
    firsts = [int(banner.split()[3].split("-")[0]) for banner in banners]
    assert len(banners) >= 6 and firsts == sorted(firsts)
