"""The reference checkpoints shipped with the course reproduce their recorded test accuracy
through the command line: `python helpers.py evaluate PATH --json` on the real 10,000 test images."""
import json
import subprocess
import sys

import pytest

import helpers

REFERENCES = sorted(helpers.REFERENCE.glob("*.pt"))


def test_the_original_network_has_best_and_last_references():
    assert {"original.pt", "original-last.pt"} <= {p.name for p in REFERENCES}


@pytest.mark.parametrize("path", REFERENCES, ids=[p.name for p in REFERENCES])
def test_reference_reproduces_its_recorded_test_accuracy(path, data_root):
    recorded = helpers.read_checkpoint(path)["reference"]
    assert {"command", "machine", "training_minutes", "test_loss"} <= set(recorded)
    result = subprocess.run([sys.executable, str(helpers.REPO_ROOT / "helpers.py"), "evaluate", str(path),
                             "--json", "--device", "cpu", "--data", str(data_root)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["test_images"] == 10_000
    assert report["params"] == helpers.count_parameters(helpers.build_model(report["model"]))
    assert abs(report["test_accuracy"] - recorded["test_accuracy"]) <= 0.001  # 0.1 points
    assert report["test_loss"] == pytest.approx(recorded["test_loss"], abs=1e-3)
    assert helpers.course_checkpoint(path.stem) in (path, helpers.CHECKPOINTS / path.name)
