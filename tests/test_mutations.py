"""The named mutations of `python -m machinery.tools mutate` still fit the code they mutate."""
import pytest

from machinery.basics import REPO_ROOT
from machinery.tools.mutations import MUTANTS


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_every_mutant_finds_its_line_once_and_names_existing_tests(mutant):
    assert (REPO_ROOT / mutant.path).read_text().count(mutant.original) == 1
    assert mutant.original != mutant.mutated
    assert all((REPO_ROOT / test).is_file() for test in mutant.tests)


def test_mutant_names_are_unique():
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
