"""The project's own Python, checked by ruff (rules and line length in ruff.toml)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers


def ruff() -> list[str]:
    """The ruff beside this Python (the test environment's), else the one on PATH."""
    beside = Path(sys.executable).with_name("ruff")
    return [str(beside)] if beside.is_file() else [shutil.which("ruff") or "ruff"]


@pytest.mark.whole_checkout
def test_the_python_passes_ruff():
    result = subprocess.run([*ruff(), "check", "--output-format", "concise", "."],
                            cwd=helpers.REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_ruff_sees_a_long_line(tmp_path):
    (tmp_path / "ruff.toml").write_text((helpers.REPO_ROOT / "ruff.toml").read_text())
    (tmp_path / "long.py").write_text(f"x = {'1' * 100}\n")
    result = subprocess.run([*ruff(), "check", "--output-format", "concise", "."],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "E501" in result.stdout
