"""The reference checkpoints shipped with the course reproduce their recorded test accuracy."""
import pytest
import torch
import torch.nn as nn

import helpers

REFERENCES = sorted(helpers.REFERENCE.glob("*.pt"))


def test_the_original_network_has_a_reference():
    assert helpers.REFERENCE / "original.pt" in REFERENCES


@pytest.mark.parametrize("path", REFERENCES, ids=[p.name for p in REFERENCES])
def test_reference_reproduces_its_recorded_test_accuracy(path, data_root, cpu):
    model, meta = helpers.load_checkpoint(path, cpu)
    recorded = meta["reference"]
    assert {"command", "machine", "training_minutes", "test_loss"} <= set(recorded)
    _, _, test_set = helpers.load_datasets(helpers.course_settings(smoke=False), root=data_root)
    loss, accuracy = helpers.evaluate(model, helpers.make_loader(test_set, 1000), nn.CrossEntropyLoss(), cpu)
    assert len(test_set) == 10_000
    assert abs(accuracy - recorded["test_accuracy"]) <= 0.001
    assert loss == pytest.approx(recorded["test_loss"], abs=1e-3)
    assert helpers.course_checkpoint(meta["model"]).is_file()
