"""The reference checkpoints shipped with the course reproduce their recorded test accuracy
through the command line: `python helpers.py evaluate PATH ... --json` on the real 10,000 test
images."""
import json
import subprocess
import sys

import pytest

import helpers
from machinery.recipes import ladder_recipes

REFERENCES = sorted(helpers.REFERENCE.glob("*.pt"))
# one-cycle recipes: the reference is the last epoch
FIXED_LENGTH = ("original-fast.pt", "improved.pt")
LADDER_RECORD = helpers.REFERENCE / "ladder.jsonl"  # notebook 10 reads it


def test_every_network_has_its_references():
    assert {"original.pt", "original-last.pt", *FIXED_LENGTH} <= {p.name for p in REFERENCES}


@pytest.fixture(scope="module")
def reports(data_root) -> dict[str, dict]:
    """`python helpers.py evaluate --json` of every reference on the real test images, in one run
    (torch and the data loaded once), by checkpoint path."""
    paths = [str(p) for p in REFERENCES]
    result = subprocess.run([sys.executable, str(helpers.REPO_ROOT / "helpers.py"), "evaluate",
                             *paths, "--json", "--device", "cpu", "--data", str(data_root)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["checkpoint"] for line in lines] == paths
    return {line["checkpoint"]: line for line in lines}


@pytest.mark.parametrize("path", REFERENCES, ids=[p.name for p in REFERENCES])
def test_reference_reproduces_its_recorded_test_accuracy(path, reports):
    recorded = helpers.read_checkpoint(path)["reference"]
    assert {"command", "machine", "training_minutes", "test_loss"} <= set(recorded)
    # its minutes say how it trained: alone, or beside other runs (as its command line tells)
    assert (recorded["runs_sharing"] > 1) == ("sharing" in recorded["command"])
    report = reports[str(path)]
    assert report["test_images"] == 10_000
    assert report["params"] == helpers.count_parameters(helpers.build_model(report["model"]))
    assert abs(report["test_accuracy"] - recorded["test_accuracy"]) <= 0.001  # 0.1 points
    assert report["test_loss"] == pytest.approx(recorded["test_loss"], abs=1e-3)
    assert helpers.course_checkpoint(path.stem) in (path, helpers.CHECKPOINTS / path.name)


def ladder_record() -> list[dict]:
    return [json.loads(line) for line in LADDER_RECORD.read_text().splitlines()]


@pytest.mark.parametrize("name, rung", [("original-fast.pt", 0), ("improved.pt", -1)])
def test_the_fixed_length_references_are_the_ladders_seed_0_networks(name, rung):
    """original-fast.pt and improved.pt are rungs 0 and 5 of the ladder with seed 0, trained on
    the 50,000 training images (no final fit): their last epoch, as RECIPES holds the recipe."""
    payload = helpers.read_checkpoint(helpers.REFERENCE / name)
    recipe = name.removesuffix(".pt")
    assert helpers.Recipe.from_dict(payload["settings"]) == helpers.course_recipe(smoke=False,
                                                                               name=recipe)
    assert payload["epoch"] == payload["settings"]["epochs"]
    rung_name = ladder_recipes(smoke=False)[rung].name
    line = next(run for run in ladder_record() if run["candidate"] == rung_name and not run["seed"])
    assert payload["metrics"]["valid_accuracy"] == pytest.approx(line["valid_accuracy"], abs=1e-4)
    assert payload["reference"]["test_accuracy"] == pytest.approx(line["test_accuracy"], abs=1e-4)


def test_the_best_reference_is_the_checkpoint_validation_chose():
    """The test set decides nothing (README, "How the course compares things"): of stage 6's two
    checkpoints, the best is the one with the higher validation accuracy (it may be the last)."""
    best = helpers.read_checkpoint(helpers.REFERENCE / "original.pt")
    last = helpers.read_checkpoint(helpers.REFERENCE / "original-last.pt")
    assert best["metrics"]["valid_accuracy"] >= last["metrics"]["valid_accuracy"]
    assert best["epoch"] <= last["epoch"]
    assert best["settings"] == last["settings"]  # one run


def test_the_ladder_record_holds_each_rung_and_three_seeds_of_the_first_and_last():
    """Notebook 10's table: seed 0 of every rung of LADDER and seeds 0, 1 and 2 of the first and
    last, each once and a whole run of the full-size rung (validation every epoch, the last
    epoch's figures, the test read once)."""
    rungs = {rung.name: rung for rung in ladder_recipes(smoke=False)}
    runs = ladder_record()
    held = [(run["candidate"], run["seed"]) for run in runs]
    assert len(set(held)) == len(held) and {name for name, _ in held} <= set(rungs)
    first, *_, last = rungs
    assert {(name, 0) for name in rungs} | {(name, seed) for name in (first, last)
                                            for seed in (1, 2)} <= set(held)
    for run in runs:
        by_epoch = run["valid_accuracy_by_epoch"]
        assert run["epochs"] == len(by_epoch) == rungs[run["candidate"]].epochs, run
        assert run["valid_accuracy"] == by_epoch[-1] and 0.85 < by_epoch[-1] < 1, run
        assert run["best_valid_accuracy"] == max(by_epoch) == by_epoch[run["best_epoch"] - 1]
        assert 0.85 < run["test_accuracy"] < 1 and run["seconds"] > 0, run
        assert run["command"] == "python -m machinery.tools ladder" and run["machine"], run
