"""The accuracy recipe (issue 27): random erasing does what it says and only where asked, the study
chooses on validation and reads the test set only for its choice, and the shipped recipe and
reference are the candidate its recorded study chose."""
import json
import statistics

import pytest
import torch

import helpers
from machinery import engine
from machinery.fast_path import DeviceLoader, erase_boxes, random_boxes
from machinery.recipes import RECIPES, Recipe
from machinery.tools import study

STUDY_RECORD = helpers.REFERENCE / "accurate-study.jsonl"


def test_random_boxes_erase_the_asked_share_inside_the_image():
    boxes = random_boxes(20_000, 0.5, torch.Generator().manual_seed(0))
    top, left, height, width = boxes.T
    chosen = height > 0
    assert abs(chosen.float().mean().item() - 0.5) < 0.02
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 28).all() and (left + width <= 28).all()
    # every position is possible: boxes smaller than the image reach its last row and column too
    assert ((top + height == 28) & (height < 28))[chosen].any()
    assert ((left + width == 28) & (width < 28))[chosen].any()
    area = (height * width)[chosen].float() / 784
    assert area.min() >= 0.01 and area.max() <= 0.45 and 0.15 < area.mean() < 0.25
    ratio = (height / width)[chosen].float()
    assert ratio.min() < 0.5 and ratio.max() > 2  # tall and wide boxes both
    assert abs(ratio.log().mean()) < 0.03 and (ratio > 3.4).float().mean() < 0.01  # 0.3 to 3.3
    assert (height[chosen] >= 2).all() and (width[chosen] >= 2).all()
    assert (width[~chosen] > 0).all()  # unchosen: height 0 alone says "no box"
    assert not random_boxes(1000, 0.0, torch.Generator().manual_seed(0))[:, 2].any()


def test_the_boxes_come_from_the_loaders_generator_alone():
    """A seeded run repeats its erasing whatever else drew from torch's global generator."""
    torch.manual_seed(1)
    first = random_boxes(100, 0.5, torch.Generator().manual_seed(0))
    torch.manual_seed(2)
    assert torch.equal(first, random_boxes(100, 0.5, torch.Generator().manual_seed(0)))


def test_erasing_stays_on_the_images_device():
    """The index grids are made where the images are (a GPU's batches stay on the GPU)."""
    images = torch.zeros(2, 1, 28, 28, device="meta")  # any mixing with CPU tensors raises
    boxes = torch.zeros(2, 4, dtype=torch.long, device="meta")
    assert erase_boxes(images, boxes, images).device.type == "meta"


def test_erase_boxes_replaces_exactly_the_box():
    images = torch.zeros(3, 1, 28, 28)
    boxes = torch.tensor([[0, 0, 2, 3], [5, 6, 0, 4], [20, 25, 8, 3]])
    erased = erase_boxes(images, boxes, torch.ones_like(images))
    expected = torch.zeros(3, 1, 28, 28)
    expected[0, 0, 0:2, 0:3] = 1  # rows 0-1, columns 0-2
    expected[2, 0, 20:28, 25:28] = 1
    assert torch.equal(erased, expected)


def loader(train, erase: float, seed: int = 0) -> DeviceLoader:
    return DeviceLoader(train, 500, shuffle=True, generator=torch.Generator().manual_seed(seed),
                        augment=True, erase=erase)


def test_erasing_changes_the_asked_share_and_nothing_else(small_sets):
    train, _, _ = small_sets
    changed = total = 0
    for (x, y), (x_erased, y_erased) in zip(loader(train, 0.0), loader(train, 0.5)):
        assert torch.equal(y, y_erased)  # same order, same shifts and mirrors
        differs = x != x_erased
        changed += int(differs.flatten(1).any(1).sum())
        total += len(y)
        # what changed lies inside one rectangle per image
        rows, cols = differs[:, 0].any(2), differs[:, 0].any(1)
        assert torch.equal(differs[:, 0], rows[:, :, None] & cols[:, None, :])
    assert 0.4 < changed / total < 0.6


def test_an_erasing_epoch_repeats_from_its_seed_whatever_the_global_generator(small_sets):
    """Boxes and noise come from the loader's generator: a resumed run erases as before."""
    train, _, _ = small_sets
    torch.manual_seed(1)
    first = list(loader(train, 0.5))
    torch.manual_seed(2)
    for (x, y), (x_again, y_again) in zip(first, loader(train, 0.5), strict=True):
        assert torch.equal(x, x_again) and torch.equal(y, y_again)


def test_no_erasing_draws_no_extra_random_numbers(small_sets):
    """Recipes without erasing repeat the runs recorded before it existed."""
    train, _, _ = small_sets
    generator = torch.Generator().manual_seed(0)
    list(DeviceLoader(train, 500, True, generator, augment=True, erase=0.0))
    expected = torch.Generator().manual_seed(0)
    torch.randperm(len(train), generator=expected)
    torch.randint(0, 5, (len(train), 2), generator=expected)
    torch.rand(len(train), generator=expected)
    assert torch.equal(generator.get_state(), expected.get_state())


def test_the_recipe_reaches_the_loader_and_refuses_bad_values(small_sets, cpu):
    train, _, _ = small_sets
    recipe = RECIPES["accurate"]
    made = engine.make_train_loader(recipe, train, torch.Generator().manual_seed(0), cpu)
    assert made.augment and made.erase == recipe.erase == 0.5
    with pytest.raises(ValueError, match="share of the images"):
        Recipe("x", fast=True, augment=True, erase=1.5)
    with pytest.raises(ValueError, match="needs augment=True"):
        Recipe("x", fast=True, erase=0.5)


def records(**valid) -> list[dict]:
    """Study records: candidate name -> validation accuracies, one per seed."""
    return [{"candidate": name, "seed": seed, "valid_accuracy": accuracy}
            for name, accuracies in valid.items() for seed, accuracy in enumerate(accuracies)]


def test_the_study_chooses_the_best_validation_mean_among_finished_candidates():
    assert study.choose(records(**{"long": [0.95, 0.95, 0.95],
                                   "long-erase": [0.96, 0.94, 0.945]})) == "long"
    assert study.choose(records(**{"long": [0.90, 0.90, 0.90],
                                   "long-erase": [0.99, 0.99]})) == "long"  # a seed missing
    stopped = [{"candidate": "long", "seed": 0, "stopped": "deadline"}]
    assert study.choose(stopped + records(**{"long": [0.9, 0.9]})) is None


@pytest.mark.parametrize("valid, read", [([0.951, 0.950, 0.952], True),
                                         ([0.949, 0.950, 0.950], False)])
def test_the_study_reads_the_test_set_only_for_its_choice_and_only_on_target(
        valid, read, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(study, "read_test",
                        lambda name, out: asked.append(name) or [0.94, 0.94, 0.94])
    report = study.conclude(records(**{"long": valid, "long-erase": [0.9, 0.9, 0.9]}), tmp_path)
    assert asked == (["long"] if read else [])
    assert report["chosen"] == "long"
    assert ("mean_test_accuracy" in report) is read
    assert json.loads((tmp_path / "study.json").read_text()) == report


def test_a_run_is_stopped_only_when_its_pace_says_it_would_overrun():
    assert not study.would_overrun([100.0, 110.0], 60, deadline=120.0)  # too soon to judge
    # after the first epoch, 10 s an epoch: 57 more epochs end at 690
    assert not study.would_overrun([100.0, 110.0, 120.0], 60, deadline=700.0)
    assert study.would_overrun([100.0, 110.0, 120.0], 60, deadline=680.0)
    # a slow first epoch (warming up) does not count against the pace
    assert not study.would_overrun([300.0, 310.0, 320.0], 60, deadline=900.0)


def test_the_accurate_recipe_is_the_candidate_its_recorded_study_chose_on_validation():
    recorded = [json.loads(line) for line in STUDY_RECORD.read_text().splitlines()]
    chosen = study.choose(recorded)
    assert Recipe.from_dict({**study.CANDIDATES[chosen].as_dict(), "name": "accurate"}) \
        == RECIPES["accurate"]
    ours = [r["valid_accuracy"] for r in recorded if r["candidate"] == chosen]
    assert sorted(r["seed"] for r in recorded if r["candidate"] == chosen) == [0, 1, 2]
    assert statistics.mean(ours) >= study.TARGET  # so the study read the test set
    assert all(r["valid_accuracy"] == r["valid_accuracy_by_epoch"][-1] for r in recorded)


def test_the_accurate_reference_is_seed_0_of_the_chosen_candidate_under_300k_parameters():
    payload = helpers.read_checkpoint(helpers.REFERENCE / "accurate.pt")
    assert Recipe.from_dict(payload["settings"]) == RECIPES["accurate"]
    assert payload["recipe"] == "accurate" and payload["epoch"] == RECIPES["accurate"].epochs
    recorded = [json.loads(line) for line in STUDY_RECORD.read_text().splitlines()]
    seed_0 = next(r for r in recorded if r["candidate"] == study.choose(recorded)
                  and r["seed"] == 0)
    assert payload["metrics"]["valid_accuracy"] == pytest.approx(seed_0["valid_accuracy"],
                                                                 abs=1e-4)
    assert helpers.count_parameters(helpers.build_model(payload["model"])) <= 300_000


def test_shipping_the_chosen_candidate_names_it_and_records_its_flip_tta_accuracy(
        tmp_path, monkeypatch, small_sets):
    from machinery.tools import trials
    torch.manual_seed(0)
    model = helpers.build_model("improved")
    candidate = study.CANDIDATES["long-erase"]
    checkpoint = engine.save(tmp_path / "long-erase-s0.pt", model, candidate, 60, {})
    monkeypatch.setattr(trials, "REFERENCE", tmp_path / "reference")
    monkeypatch.setattr(trials, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(helpers, "load_datasets", lambda *_, **__: small_sets)
    (tmp_path / "reference").mkdir()
    shipped = helpers.read_checkpoint(trials.make_reference(checkpoint, "a command", 3.1,
                                                            name="accurate"))
    assert shipped["recipe"] == "accurate" == shipped["settings"]["name"]
    test = helpers.make_loader(small_sets[2], 1000)
    loss_fn = torch.nn.CrossEntropyLoss()
    with_tta = helpers.evaluate(engine.FlipTTA(model.eval()), test, loss_fn, "cpu")
    assert with_tta != helpers.evaluate(model, test, loss_fn, "cpu")  # so the check can fail
    assert (shipped["reference"]["test_loss"], shipped["reference"]["test_accuracy"]) \
        == pytest.approx(with_tta)
