"""The named mutations of `python -m machinery.tools mutate` still fit the code they mutate."""
import pytest

from machinery.basics import REPO_ROOT
from machinery.tools.mutations import MUTANTS


@pytest.mark.whole_checkout
def test_every_mutant_finds_its_line_once_and_names_existing_tests():
    stale = [m.name for m in MUTANTS if (REPO_ROOT / m.path).read_text().count(m.original) != 1
             or m.original == m.mutated
             or not all((REPO_ROOT / test).is_file() for test in m.tests)]
    assert stale == [], "these mutants no longer fit their code: update them in mutations.py"


def test_mutant_names_are_unique():
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
