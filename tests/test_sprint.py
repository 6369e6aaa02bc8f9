"""The sprint (issue 27): its network and recipe are what they declare, flip test-time
augmentation is wired into every evaluation of a recipe that asks for it, and `bench --sprint`
compares like with like. How fast it runs is measured by the bench, not asserted here."""
import re
import time
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

import helpers
from machinery import bench, cli, engine, fast_path, runs
from machinery.basics import CheckpointError
from machinery.fast_path import DeviceLoader
from machinery.networks import SprintCNN
from machinery.recipes import RECIPES, Recipe
from machinery.tools.notebooks import stored_text

NOTEBOOK_6 = helpers.REPO_ROOT / "notebooks" / "06_train.ipynb"


def test_the_sprint_network_has_the_parameters_its_docstring_says_and_at_most_300k():
    stated = int(re.search(r"([\d,]+)\s+parameters", SprintCNN.__doc__)[1].replace(",", ""))
    assert helpers.count_parameters(helpers.build_model("sprint")) == stated <= 300_000


def test_the_sprint_network_gives_ten_logits_per_image():
    model = helpers.build_model("sprint").eval()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_each_block_of_the_sprint_network_gives_the_shape_its_comment_says_after_a_relu():
    """Pooling, padding and the ReLU are what the size of every layer's output (notebook 11's
    count) depends on; the parameter count sees none of them."""
    model = helpers.build_model("sprint").eval()
    x, shapes = torch.randn(4, 1, 28, 28), []
    with torch.no_grad():
        for i, block in enumerate(model.features):
            x = block(x)
            shapes.append(tuple(x.shape[1:]))
            if i < 5:  # the five convolution blocks end with a ReLU
                assert x.min() >= 0 and x.max() > 0, f"block {i}"
    assert shapes == [(16, 14, 14), (64, 7, 7), (64, 7, 7), (128, 3, 3), (128, 3, 3),
                      (128, 1, 1), (128,)]


def test_the_sprint_network_pools_before_it_normalises_and_ends_in_a_max():
    """The design notebook 11 times: a pooled block's BatchNorm and ReLU touch a quarter of the
    values (airbench's order), and the features end in a global max, as the improved network's."""
    kinds = [[type(layer) for layer in block] if isinstance(block, nn.Sequential) else type(block)
             for block in helpers.build_model("sprint").features]
    pooled = [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]
    plain = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert kinds == [pooled, pooled, plain, pooled, plain, nn.AdaptiveMaxPool2d, nn.Flatten]


def test_the_sprint_recipe_declares_what_the_notebook_says():
    recipe = RECIPES["sprint"]
    assert type(helpers.build_model(recipe.network)) is SprintCNN
    # every setting the README's sprint section states, against the course's defaults
    changed = {k: v for k, v in recipe.as_dict().items() if v != getattr(Recipe("x"), k)}
    assert changed == {"name": "sprint", "network": "sprint", "fast": True, "batch_size": 128,
                       "epochs": 5, "lr": 3e-3, "optimizer": "adamw", "weight_decay": 5e-4,
                       "schedule": "onecycle", "augment": True, "shift": 0,
                       "label_smoothing": 0.1, "flip_tta": True, "cpu_bf16": True}


def test_flip_tta_gives_the_same_logits_for_an_image_that_is_its_own_mirror():
    torch.manual_seed(0)
    model = helpers.build_model("sprint").eval()
    half = torch.rand(2, 1, 28, 14)
    symmetric = torch.cat([half, half.flip(3)], dim=3)  # the right half mirrors the left
    lopsided = torch.cat([half, torch.zeros_like(half)], dim=3)
    with torch.no_grad():
        assert torch.allclose(engine.FlipTTA(model)(symmetric), model(symmetric), atol=1e-5)
        assert not torch.allclose(engine.FlipTTA(model)(lopsided), model(lopsided), atol=1e-3)


def test_shift_zero_only_mirrors(small_sets):
    train, _, _ = small_sets
    plain = DeviceLoader(train, 512, shuffle=True, generator=torch.Generator().manual_seed(0))
    mirrored = DeviceLoader(train, 512, shuffle=True, generator=torch.Generator().manual_seed(0),
                            augment=True, shift=0)
    flipped = kept = 0
    for (x, y), (x_aug, y_aug) in zip(plain, mirrored):
        assert torch.equal(y, y_aug)
        same = (x == x_aug).flatten(1).all(1)
        mirror = (x.flip(3) == x_aug).flatten(1).all(1)
        assert (same | mirror).all()  # each image as it is, or its mirror: never moved
        kept, flipped = kept + int((same & ~mirror).sum()), flipped + int((mirror & ~same).sum())
    assert kept > 100 and flipped > 100


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_a_recipe_refuses_a_shift_that_is_not_a_whole_number_of_pixels(bad):
    with pytest.raises(ValueError, match="shift must be a whole number"):
        replace(RECIPES["sprint"], shift=bad)


def spy_on_evaluate(monkeypatch) -> list:
    """Record the network each call of helpers.evaluate gets."""
    seen, evaluate = [], helpers.evaluate
    def recording(model, *args, **kwargs):
        seen.append(model)
        return evaluate(model, *args, **kwargs)
    monkeypatch.setattr(helpers, "evaluate", recording)
    return seen


@pytest.mark.parametrize("flip_tta", [True, False])
def test_validation_and_test_figures_use_flip_tta_when_the_recipe_asks(flip_tta, small_sets, cpu,
                                                                       monkeypatch, tmp_path,
                                                                       capsys):
    recipe = replace(helpers.course_recipe(smoke=True, name="sprint"), epochs=1,
                     flip_tta=flip_tta)
    seen = spy_on_evaluate(monkeypatch)
    monkeypatch.setattr(engine, "recipe_datasets", lambda *_: small_sets)
    lines = []
    report = runs.train(recipe, cpu, data=tmp_path, runs=tmp_path / "runs",
                        out=tmp_path / "sprint.pt", log=lines.append)
    # every line goes where the caller asked, none to stdout
    assert any(line.startswith("epoch   1/1 ") for line in lines) and not capsys.readouterr().out
    # validation after the epoch, then the last and the best network on the test set
    assert len(seen) >= 3 and report["best"][2] == str(tmp_path / "sprint.pt")
    assert all(isinstance(model, engine.FlipTTA) == flip_tta for model in seen[-3:])
    assert isinstance(seen[0], engine.FlipTTA) == flip_tta


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no-amx"])
def test_cpu_bf16_trains_and_evaluates_in_bf16_only_where_the_cpu_has_amx(amx, small_sets, cpu,
                                                                          monkeypatch, tmp_path):
    monkeypatch.setattr(fast_path, "has_amx", lambda: amx)
    trained, train_one_epoch = [], helpers.train_one_epoch
    def recording(model, *args, **kwargs):
        trained.append(model)
        return train_one_epoch(model, *args, **kwargs)
    monkeypatch.setattr(helpers, "train_one_epoch", recording)
    seen = spy_on_evaluate(monkeypatch)
    # a batch of each set: bf16 without AMX units is slow, and only the wrappers are checked
    batch_sets = [helpers.first(images, 128) for images in small_sets]
    monkeypatch.setattr(engine, "recipe_datasets", lambda *_: batch_sets)
    recipe = replace(helpers.course_recipe(smoke=True, name="sprint"), epochs=1)
    runs.train(recipe, cpu, data=tmp_path, runs=tmp_path / "runs", out=tmp_path / "sprint.pt",
               log=lambda _: None)
    # the training step, validation, and the last and best networks on the test set
    networks = trained + [flipped.model for flipped in seen]
    assert len(networks) >= 4
    assert all(isinstance(net, engine.MixedPrecision) == amx for net in networks)
    assert all(net.precision == torch.bfloat16 for net in networks if amx)
    # one wrapper each, around the network itself (validation wraps the network, not the
    # training step's wrapper: on a GPU that would validate in the training's precision)
    inner = [net.model if amx else net for net in networks]
    assert all(type(net) is SprintCNN for net in inner)


@pytest.mark.parametrize("name", ["sprint", "improved"])
def test_a_gpu_evaluates_in_fp32_whatever_the_recipe_trains_in(name):
    # so a checkpoint's figures compare across GPUs (no CUDA needed: only the device type is read)
    network = helpers.build_model(RECIPES[name].network)
    evaluated = engine.evaluated(network, RECIPES[name], torch.device("cuda"))
    assert not any(isinstance(part, engine.MixedPrecision) for part in evaluated.modules())
    assert (evaluated.model if RECIPES[name].flip_tta else evaluated) is network


def test_a_checkpoint_whose_recipe_cannot_be_read_gets_an_error_naming_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="old.pt: its recorded recipe cannot be read"):
        runs.checkpoint_recipe(tmp_path / "old.pt", {"settings": {"name": "x", "warp": 9}})
    with pytest.raises(CheckpointError, match="old.pt: its recorded recipe cannot be read"):
        runs.checkpoint_recipe(tmp_path / "old.pt",
                               {"settings": {"name": "x", "optimizer": "lion"}})  # a bad value
    assert runs.checkpoint_recipe(tmp_path / "old.pt", {"settings": None}) is None


def test_a_recipe_refuses_cpu_bf16_off_the_fast_path():
    with pytest.raises(ValueError, match="cpu_bf16=True needs the fast path"):
        replace(RECIPES["original"], cpu_bf16=True)


def test_evaluate_command_uses_flip_tta_as_the_checkpoints_recipe_did(small_sets, cpu,
                                                                      monkeypatch, tmp_path):
    torch.manual_seed(0)  # an untrained network's loss barely moves with TTA: 6e-7 in one draw
    model = helpers.build_model("sprint")
    with torch.no_grad():
        model.classifier.weight.mul_(20)  # confident logits: mirroring moves the loss by 1e-3
    paths = []
    for flip_tta in (True, False):
        recipe = replace(RECIPES["sprint"], flip_tta=flip_tta)
        paths.append(engine.save(tmp_path / f"tta-{flip_tta}.pt", model, recipe, 1, {}))
    seen = spy_on_evaluate(monkeypatch)
    monkeypatch.setattr(helpers, "load_datasets", lambda *_, **__: small_sets)
    monkeypatch.setattr(fast_path, "has_amx", lambda: True)  # the sprint's bf16, as it trained
    results = list(runs.evaluate_checkpoints(paths, cpu, helpers.DATA_ROOT))
    assert [r["flip_tta"] for r in results] == [True, False]
    assert [isinstance(m, engine.FlipTTA) for m in seen] == [True, False]
    assert [type(m.model if r["flip_tta"] else m) for m, r in zip(seen, results)] == [
        engine.MixedPrecision] * 2
    assert results[0]["test_loss"] != pytest.approx(results[1]["test_loss"], rel=1e-4)


def first_epoch_at_93_in_notebook_6() -> int:
    """The first epoch of notebook 6's stored full run with 93.0% validation accuracy."""
    epochs = re.findall(r"epoch +(\d+)/50 .*?valid acc +([\d.]+)%", stored_text(NOTEBOOK_6))
    assert len(epochs) >= 20, "notebook 6 has no stored full run"
    return next(int(epoch) for epoch, accuracy in epochs if float(accuracy) >= 93.0)


def test_the_bench_compares_with_no_more_epochs_than_notebook_6_recorded():
    assert 1 <= bench.ORIGINAL_EPOCHS_TO_93 <= first_epoch_at_93_in_notebook_6()


def test_sprint_bench_reports_both_sides_and_their_ratio(data_root):
    recipe = helpers.course_recipe(smoke=True, name="sprint")
    report = bench.sprint_bench(recipe, rounds=2, root=data_root, images=256)
    assert [run["seed"] for run in report["runs"]] == [0, 1]
    assert all(run["epochs"] == 2 and 0 < run["test_accuracy"] <= 1 for run in report["runs"])
    assert report["runs"][0]["test_accuracy"] != report["runs"][1]["test_accuracy"]
    seconds = sorted(run["seconds"] for run in report["runs"])
    assert report["median_seconds"] == pytest.approx(sum(seconds) / 2)
    expected = bench.ORIGINAL_EPOCHS_TO_93 * report["original_epoch_seconds"]
    assert report["original_seconds_to_93"] == pytest.approx(expected, abs=1)
    assert report["ratio"] == pytest.approx(expected / report["median_seconds"], rel=0.05)
    assert report["parameters"] == helpers.count_parameters(SprintCNN())


def test_bench_sprint_flag_runs_the_sprint(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "print_sprint", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(bench, "print_bench", lambda **kwargs: calls.append("plain"))
    assert cli.main(["bench", "--sprint", "--json"]) == 0
    assert calls == [{"json_output": True}]


@pytest.mark.parametrize("accuracy", [0.9297, 0.9315])
def test_the_sprint_report_says_when_the_sprint_missed_93_percent(accuracy, monkeypatch, capsys):
    report = {"median_seconds": 65.1, "runs": [{"test_accuracy": accuracy}],
              "mean_test_accuracy": accuracy, "original_epochs_to_93": 11,
              "original_epoch_seconds": 63.9, "original_seconds_to_93": 703, "ratio": 10.8,
              "machine": "a CPU"}
    monkeypatch.setattr(bench, "sprint_bench", lambda: report)
    bench.print_sprint()
    assert ("below 93%" in capsys.readouterr().out) == (accuracy < 0.93)


def test_sprint_run_reads_the_test_set_once_as_its_recipe_evaluates(data_root, cpu, monkeypatch):
    evaluated = []
    real = helpers.evaluate
    monkeypatch.setattr(helpers, "evaluate", lambda model, loader, loss_fn, device:
                        evaluated.append((model, len(loader.dataset)))
                        or real(model, loader, loss_fn, device))
    recipe = replace(helpers.course_recipe(smoke=True, name="sprint"), epochs=1,
                     valid_size=300, test_size=200)
    result, model = bench.sprint_run(recipe, cpu, data_root)
    [(validated, valid_images), (tested, test_images)] = evaluated
    assert (valid_images, test_images) == (300, 200)  # one validation, then the test set once
    assert type(tested) is engine.FlipTTA and type(validated) is engine.FlipTTA
    assert result["test_accuracy"] == pytest.approx(real(tested, engine.make_eval_loader(
        recipe, helpers.load_datasets(recipe, data_root)[2], cpu), torch.nn.CrossEntropyLoss(),
        cpu)[1], abs=1e-4)


def test_sprint_run_reports_its_last_epoch_not_its_best(data_root, cpu, monkeypatch):
    real, scripted = helpers.evaluate, iter([(0.5, 0.9), (0.6, 0.4)])  # (loss, accuracy)
    monkeypatch.setattr(helpers, "evaluate", lambda *args: next(scripted, None) or real(*args))
    recipe = replace(helpers.course_recipe(smoke=True, name="sprint"), epochs=2)
    result, _ = bench.sprint_run(recipe, cpu, data_root, test=False)
    assert result["valid_accuracy"] == 0.4  # a fixed-length recipe delivers its last epoch


def test_sprint_run_stops_at_validation_while_a_recipe_is_being_chosen(data_root, cpu):
    recipe = replace(helpers.course_recipe(smoke=True, name="sprint"), epochs=1)
    result, model = bench.sprint_run(recipe, cpu, data_root, test=False)
    assert type(model) is SprintCNN
    assert "test_accuracy" not in result and 0 < result["valid_accuracy"] <= 1
    assert result["epochs"] == 1


@pytest.mark.parametrize("shift", [0, 1])
def test_the_runner_hands_the_recipes_shift_to_its_training_batches(shift, small_sets, cpu):
    recipe = replace(RECIPES["sprint"], shift=shift)
    loader = engine.make_train_loader(recipe, small_sets[0], torch.Generator(), cpu)
    assert loader.augment and loader.shift == shift


def test_an_original_epoch_counts_training_and_validation_scaled_to_the_whole_sets(small_sets,
                                                                                   cpu,
                                                                                   monkeypatch):
    train, valid, _ = small_sets
    monkeypatch.setattr(bench, "images_per_second", lambda *_: 1000.0)  # training: 0.512 s
    timed = []
    def slow_evaluate(model, loader, loss_fn, device):
        timed.append(len(loader.dataset))
        time.sleep(0.2)  # a validation pass over the share of images it gets
        return 0.0, 0.0
    monkeypatch.setattr(helpers, "evaluate", slow_evaluate)
    seconds = bench.original_epoch_seconds(train, valid, cpu, images=256)
    assert timed == [64]  # a quarter of the timed training images, then scaled: 256 / 64 = 4
    assert 0.512 + 4 * 0.2 <= seconds < 0.512 + 4 * 0.2 + 0.4


def test_a_stopped_sprint_run_stops_instead_of_reporting_half_a_run(data_root, cpu, monkeypatch):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # Colab's stop button, during the first epoch
    monkeypatch.setattr(helpers, "train_one_epoch", stopped)
    recipe = replace(helpers.course_recipe(smoke=True, name="sprint"), epochs=1)
    with pytest.raises(KeyboardInterrupt):
        bench.sprint_run(recipe, cpu, data_root, test=False)
