"""The reference checkpoints shipped with the course reproduce their recorded test accuracy
through the command line: `python helpers.py evaluate PATH ... --json` on the real 10,000 test
images."""
import json
import subprocess
import sys

import pytest
from dataclasses import replace

import helpers

REFERENCES = sorted(helpers.REFERENCE.glob("*.pt"))
# one-cycle recipes: the reference is the last epoch
FIXED_LENGTH = ("original-fast.pt", "improved.pt")


def test_every_network_has_its_references():
    assert {"original.pt", "original-last.pt", *FIXED_LENGTH} <= {p.name for p in REFERENCES}


@pytest.fixture(scope="module")
def reports(data_root):
    """report(path): `evaluate --json` on the real test images, one run per network (data and torch
    loaded once per run), started by the first test that needs it -- so no one test waits for
    all."""
    done: dict[str, dict] = {}
    network = {str(p): helpers.read_checkpoint(p)["model"] for p in REFERENCES}

    def report(path) -> dict:
        if str(path) not in done:
            group = [p for p in network if network[p] == network[str(path)]]
            result = subprocess.run([sys.executable, str(helpers.REPO_ROOT / "helpers.py"),
                                     "evaluate", *group, "--json", "--device", "cpu",
                                     "--data", str(data_root)],
                                    capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stderr
            lines = [json.loads(line) for line in result.stdout.splitlines()]
            assert [line["checkpoint"] for line in lines] == group
            done.update({line["checkpoint"]: line for line in lines})
        return done[str(path)]
    return report


@pytest.mark.parametrize("path", REFERENCES, ids=[p.name for p in REFERENCES])
def test_reference_reproduces_its_recorded_test_accuracy(path, reports):
    recorded = helpers.read_checkpoint(path)["reference"]
    assert {"command", "machine", "training_minutes", "test_loss"} <= set(recorded)
    report = reports(path)
    assert report["test_images"] == 10_000
    assert report["params"] == helpers.count_parameters(helpers.build_model(report["model"]))
    assert abs(report["test_accuracy"] - recorded["test_accuracy"]) <= 0.001  # 0.1 points
    assert report["test_loss"] == pytest.approx(recorded["test_loss"], abs=1e-3)
    assert helpers.course_checkpoint(path.stem) in (path, helpers.CHECKPOINTS / path.name)


@pytest.mark.parametrize("name", FIXED_LENGTH)
def test_fixed_length_references_are_the_last_epoch_of_their_recipe(name):
    """Their figures are final-epoch ones of the recipe as RECIPES holds it, not a best epoch."""
    payload = helpers.read_checkpoint(helpers.REFERENCE / name)
    recipe = name.removesuffix(".pt")
    # a final fit: the recipe chosen on validation, then trained on all 60,000 training images
    # recorded before recipes had names: 'unnamed'
    saved = helpers.Recipe.from_dict(payload["settings"])
    assert replace(saved, name=recipe) == helpers.course_recipe(smoke=False, name=recipe,
                                                                  final_fit=True)
    assert payload["epoch"] == payload["settings"]["epochs"]


def test_the_best_reference_is_the_checkpoint_validation_chose():
    """The test set decides nothing (README, "How the course compares things"): of stage 6's two
    checkpoints, the best is the one with the higher validation accuracy, from an earlier epoch."""
    best = helpers.read_checkpoint(helpers.REFERENCE / "original.pt")
    last = helpers.read_checkpoint(helpers.REFERENCE / "original-last.pt")
    assert best["metrics"]["valid_accuracy"] >= last["metrics"]["valid_accuracy"]
    assert best["epoch"] <= last["epoch"]
    assert best["settings"] == last["settings"]  # one run
