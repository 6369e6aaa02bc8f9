"""Install files: requirements.txt and environment.yml agree and admit Colab's preinstalled torch."""
import re

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
