"""Stage 10 as a controlled experiment: random erasing on the fast path (Recipe.erase), and the ladder
from original-fast to improved, one change per rung (machinery.recipes.LADDER)."""
import dataclasses
import math

import pytest
import torch

import helpers
from machinery import fast_path
from machinery.recipes import LADDER, RECIPES, ladder_recipes

AREA, ASPECT = (0.02, 0.33), (0.3, 3.3)  # torchvision RandomErasing's defaults, as random_boxes draws them


def loader(dataset, seed=0, **options):
    return helpers.DeviceLoader(dataset, 128, shuffle=True, generator=torch.Generator().manual_seed(seed), **options)


def batches(loader):
    return torch.cat([x for x, _ in loader])


# ---- random erasing ----------------------------------------------------------------------------

def test_random_boxes_fit_the_image_and_stay_in_range():
    boxes = fast_path.random_boxes(4000, 1.0, torch.Generator().manual_seed(0))
    top, left, height, width = boxes.T
    assert (height > 0).all() and (width > 0).all()  # every image gets a rectangle
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 28).all() and (left + width <= 28).all()
    share, ratio = (height * width).double() / 28 ** 2, height.double() / width
    assert AREA[0] <= share.min() and share.max() <= AREA[1] and ASPECT[0] <= ratio.min() and ratio.max() <= ASPECT[1]
    assert share.max() > 0.25 and share.min() < 0.03 and ratio.min() < 0.4 and ratio.max() > 2.5  # the whole range
    assert len({(t, l) for t, l in zip(top.tolist(), left.tolist())}) > 100  # all over the image
    assert (fast_path.random_boxes(1000, 0.0, torch.Generator().manual_seed(0))[:, 2:] == 0).all()
    half = (fast_path.random_boxes(4000, 0.5, torch.Generator().manual_seed(0))[:, 2] > 0).float().mean()
    assert 0.45 < half < 0.55  # the probability is the share of images erased (binomial sd 0.008)


def test_erase_boxes_zeroes_exactly_each_box():
    images = torch.rand(3, 1, 28, 28) + 0.1  # no zero anywhere
    boxes = torch.tensor([[0, 0, 2, 3], [20, 25, 8, 3], [5, 5, 0, 0]])  # top, left, height, width
    out = fast_path.erase_boxes(images, boxes)
    expected = images.clone()
    expected[0, 0, 0:2, 0:3] = 0
    expected[1, 0, 20:28, 25:28] = 0
    assert torch.equal(out, expected)


def bounding_boxes(mask: torch.Tensor) -> torch.Tensor:
    """Per image [N, H, W], the smallest filled rectangle holding all of its True pixels (none: all False)."""
    def span(marks):  # [N, L]: True from each row's first True to its last
        at = torch.arange(marks.shape[1])
        first, last = torch.where(marks, at, marks.shape[1]).min(1).values, torch.where(marks, at, -1).max(1).values
        return (at >= first[:, None]) & (at <= last[:, None])
    return span(mask.any(2))[:, :, None] & span(mask.any(1))[:, None, :]


def assert_one_zero_rectangle(erased: torch.Tensor, plain: torch.Tensor) -> None:
    """Each erased image differs from its plain one only inside one rectangle (the changed pixels'
    bounding box), and that rectangle is all background."""
    box = bounding_boxes(erased[:, 0] != plain[:, 0]).unsqueeze(1)
    assert (erased[box] == 0).all() and torch.equal(erased[~box], plain[~box])


def test_erase_1_sets_one_rectangle_of_every_training_image_to_zero(small_sets):
    train, _, _ = small_sets
    erasing, plain = loader(train, erase=1.0), loader(train)
    for each in (erasing, plain):  # real images without a zero pixel: every erased pixel shows
        each.images = each.images.clamp(max=254) + 1
    erased, original = batches(erasing), batches(plain)
    assert (original > 0).all()
    zeros = erased[:, 0] == 0
    assert torch.equal(zeros, bounding_boxes(zeros)), "the zeros of an image are not one filled rectangle"
    height, width = zeros.any(2).sum(1), zeros.any(1).sum(1)
    assert (height > 0).all(), "an image was not erased"
    share, ratio = (height * width).double() / 28 ** 2, height.double() / width
    assert AREA[0] <= share.min() and share.max() <= AREA[1] and ASPECT[0] <= ratio.min() and ratio.max() <= ASPECT[1]
    outside = ~zeros.unsqueeze(1)
    assert torch.equal(erased[outside], original[outside]), "pixels outside the rectangle changed"
    # with shifts and flips: the same moved images (erasing draws its numbers after theirs), one box erased
    assert_one_zero_rectangle(batches(loader(train, augment=True, erase=1.0)), batches(loader(train, augment=True)))


def test_erase_0_changes_nothing_and_a_seed_repeats_its_erasing(small_sets):
    train, _, _ = small_sets
    assert torch.equal(batches(loader(train, augment=True, erase=0.0)), batches(loader(train, augment=True)))
    first, again, other = (batches(loader(train, seed, erase=0.5)) for seed in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, batches(loader(train)))


def test_an_erase_recipe_erases_its_training_batches_only(small_sets, cpu):
    train, valid, _ = small_sets
    recipe = helpers.course_settings(smoke=True, recipe="improved", erase=1.0, augment=False)
    plain = torch.cat([x for x, _ in helpers.make_loader(valid, 1000)])
    evaluation = helpers.make_eval_loader(recipe, valid, cpu)
    first_pass, second_pass = batches(evaluation), batches(evaluation)
    assert torch.equal(first_pass, second_pass) and torch.equal(first_pass, plain)
    training = batches(helpers.make_train_loader(recipe, train, torch.Generator().manual_seed(0), cpu))
    unerased = batches(helpers.make_train_loader(dataclasses.replace(recipe, erase=0.0), train,
                                                 torch.Generator().manual_seed(0), cpu))
    assert not torch.equal(training, unerased)
    assert_one_zero_rectangle(training, unerased)


@pytest.mark.parametrize("overrides, message", [
    ({"erase": 1.5}, r"^erase must be a probability in 0\.\.1, got 1\.5$"),
    ({"erase": -0.1}, r"^erase must be a probability in 0\.\.1, got -0\.1$"),
    ({"erase": math.nan}, r"^erase must be a probability in 0\.\.1, got nan$"),
    ({"erase": 0.5}, r"^erase=0\.5 needs the fast path \(fast=True\): erasing runs on the device$"),
])
def test_bad_erase_values_are_refused_with_the_way_out(overrides, message):
    with pytest.raises(ValueError, match=message):
        helpers.course_settings(smoke=True, **overrides)  # the original recipe: not on the fast path
    assert helpers.course_settings(smoke=True, recipe="original-fast", erase=0.5).erase == 0.5


# ---- the ladder ----------------------------------------------------------------------------------

def changed_fields(before, after) -> set[str]:
    return {f.name for f in dataclasses.fields(before) if f.name != "name" and getattr(before, f.name) != getattr(after, f.name)}


def test_each_rung_changes_exactly_what_it_declares():
    rungs = ladder_recipes(smoke=False)
    assert len(rungs) == len(LADDER) == 6
    for previous, rung, (name, words, changes) in zip(rungs, rungs[1:], LADDER[1:]):
        assert changes and words, name
        assert changed_fields(previous, rung) == set(changes), name
        assert all(getattr(rung, field) == value for field, value in changes.items()), name
    assert LADDER[0][2] == {}


def test_the_ladder_climbs_from_original_fast_to_improved_under_its_own_names():
    rungs = ladder_recipes(smoke=False)
    assert dataclasses.replace(rungs[0], name="original-fast") == RECIPES["original-fast"]
    assert dataclasses.replace(rungs[-1], name="improved") == RECIPES["improved"]
    names = [rung.name for rung in rungs]
    assert len(set(names)) == len(names) and names[1] == "ladder-1-improved-network"
    assert all(name.startswith(f"ladder-{i}-") for i, name in enumerate(names))
    assert not any(rung.erase for rung in rungs) and not any(recipe.erase for recipe in RECIPES.values())


def test_smoke_mode_shrinks_every_rung_alike(monkeypatch):
    full, smoke = ladder_recipes(smoke=False), ladder_recipes(smoke=True)
    for big, small in zip(full, smoke):
        assert (small.epochs, small.train_size, small.valid_size, small.test_size) == (2, 4000, 1000, 1000)
        assert dataclasses.replace(small, epochs=big.epochs, train_size=None, valid_size=None, test_size=None) == big
    monkeypatch.setenv("FMNIST_SMOKE", "1")
    assert ladder_recipes() == smoke


def test_the_second_rung_trains_a_smoke_epoch_on_the_cpu(small_sets, cpu, tmp_path):
    train, valid, _ = small_sets
    rung = dataclasses.replace(ladder_recipes(smoke=True)[1], epochs=1)
    lines = []
    model, history, _ = helpers.train_run(rung, helpers.first(train, 64), helpers.first(valid, 64), cpu,
                                          run_dir=tmp_path / "run", last_path=tmp_path / "last.pt", log=lines.append)
    assert history.epochs == 1 and 0 < history.train_loss[0] < 5 and 0 <= history.valid_accuracy[0] <= 1
    assert lines[0].startswith("recipe ladder-1-improved-network: improved (261,298 parameters)")
    assert helpers.read_checkpoint(tmp_path / "last.pt")["recipe"] == "ladder-1-improved-network"
