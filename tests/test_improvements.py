"""Stage 10's recipes: the improved network, one-cycle, augmentation, label smoothing, flip TTA."""
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import helpers
from machinery import engine, recipes
from machinery.recipes import SMOKE_SIZES


def test_the_improved_network_stays_under_300k_parameters_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    model = helpers.build_model("improved")
    assert helpers.count_parameters(model) == 261_298 <= 300_000
    assert helpers.network_name(model) == "improved"
    x = torch.rand(4, 1, 28, 28)
    model.train()
    model(torch.rand(64, 1, 28, 28))  # move the BatchNorm statistics away from their start
    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (4, 10)
        assert torch.equal(logits, model(x))


@pytest.mark.parametrize("recipe", sorted(helpers.RECIPES))
def test_every_recipe_is_valid_and_smoke_mode_only_shrinks_it(recipe):
    full = helpers.course_recipe(smoke=False, name=recipe)
    smoke = helpers.course_recipe(smoke=True, name=recipe)
    assert smoke.epochs == 2 and smoke.train_size == SMOKE_SIZES["train_size"] < 50_000
    assert dataclasses.replace(smoke, epochs=full.epochs, train_size=None, valid_size=None,
                               test_size=None) == full


def test_an_unknown_recipe_name_is_refused_with_the_names_to_choose_from():
    expected = f"unknown recipe 'nope': choose one of {', '.join(helpers.RECIPES)}"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        helpers.course_recipe(name="nope")
    assert "original, original-fast, improved" in expected


def test_recipes_name_their_checkpoints_apart(tmp_path):
    names = {recipe: helpers.checkpoint_paths(helpers.course_recipe(smoke=False, name=recipe),
                                              tmp_path)[0].name
             for recipe in helpers.RECIPES}
    assert names == {"original": "original.pt", "original-fast": "original-fast.pt",
                     "improved": "improved.pt", "sprint": "sprint.pt", "accurate": "accurate.pt"}
    final = helpers.course_recipe(smoke=False, name="improved", final_fit=True)
    assert helpers.checkpoint_paths(final, tmp_path)[1].name == "improved-final-last.pt"


@pytest.mark.parametrize("overrides, message", [
    ({"weight_decay": -1.0}, "weight_decay must be zero or positive, got -1.0"),
    ({"optimizer": "sgd"}, "unknown optimizer 'sgd': choose adam or adamw"),
    ({"schedule": "cosine"}, "unknown schedule 'cosine': choose plateau or onecycle"),
    ({"label_smoothing": 1.0}, "label_smoothing must be in 0..1, got 1.0"),
    ({"fast": True, "erase": 0.5}, "erase needs augment=True: random erasing is an augmentation"),
    ({"cpu_bf16": True}, "cpu_bf16=True needs the fast path (fast=True): mixed precision is the "
                         "fast path's"),
    ({"augment": True, "fast": False},
     "augment=True needs the fast path (fast=True): augmentation runs on the device"),
    ({"final_fit": True}, "final_fit needs a fixed-length schedule (onecycle): the plateau "
                          "schedule and early stopping watch the validation loss, and a final "
                          "fit has no held-out validation"),
])
def test_bad_recipe_settings_are_refused_with_the_way_out(overrides, message):
    with pytest.raises(ValueError) as error:
        helpers.course_recipe(smoke=True, **overrides)
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        helpers.course_recipe(name="resnet")
    assert str(error.value) == ("unknown recipe 'resnet': choose one of original, original-fast, "
                                "improved, sprint, accurate")


def test_random_erasing_may_take_every_image_and_no_more():
    every = helpers.course_recipe(smoke=True, name="original-fast", augment=True, erase=1.0)
    assert every.erase == 1.0  # the whole share: Zhong et al.'s p = 1
    for share in (-0.1, 1.01):
        with pytest.raises(ValueError) as error:
            dataclasses.replace(every, erase=share)
        assert str(error.value) == f"erase is a share of the images, 0 to 1, got {share!r}"


def test_a_recipe_recorded_without_a_name_is_unnamed():
    saved = helpers.course_recipe(smoke=False).as_dict()
    del saved["name"]
    unnamed = dataclasses.replace(helpers.course_recipe(smoke=False), name="unnamed")
    assert helpers.Recipe.from_dict(saved) == unnamed


def test_a_recipe_recorded_with_its_network_as_model_reads_back():
    """Checkpoints written before Recipe.model became Recipe.network (the reference ones)."""
    saved = helpers.course_recipe("improved", smoke=False).as_dict()
    saved["model"] = saved.pop("network")
    assert helpers.Recipe.from_dict(saved) == helpers.course_recipe("improved", smoke=False)


def test_the_recipe_for_a_network_prefers_its_own_path(monkeypatch):
    assert recipes.recipe_for_network("original") == "original"  # not the fast path by default
    assert recipes.recipe_for_network("original", fast=True) == "original-fast"
    # an exact match on the path first, whatever the names' alphabetical order
    monkeypatch.setattr(recipes, "RECIPES", {
        "a-fast": recipes.Recipe("a-fast", fast=True, schedule="onecycle"),
        "b-plain": recipes.Recipe("b-plain")})
    assert recipes.recipe_for_network("original") == "b-plain"
    assert recipes.recipe_for_network("original", fast=True) == "a-fast"


@pytest.mark.parametrize("fast, where", [(False, ""), (True, " on the fast path")])
def test_a_network_without_a_recipe_is_told_which_have_one(fast, where):
    with pytest.raises(ValueError) as error:
        recipes.recipe_for_network("tiny", fast=fast)
    assert str(error.value) == (f"no recipe trains the network 'tiny'{where}: networks with a "
                                f"recipe: improved, original, sprint "
                                f"(add one to machinery.recipes.RECIPES)")


def test_a_run_is_named_by_its_recipe_and_start_time():
    name = recipes.run_name(helpers.course_recipe(smoke=True))
    assert re.fullmatch(r"original-b16-lr0\.001-smoke-20\d{6}-\d{6}", name), name


def test_one_cycle_warms_up_then_anneals_once_per_batch():
    settings = helpers.course_recipe(smoke=False, name="original-fast")
    optimizer = helpers.make_optimizer(helpers.build_model("original"), settings)
    scheduler = engine.make_schedule(optimizer, settings, steps_per_epoch=10)
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    lrs = []
    for _ in range(settings.epochs * 10):
        lrs.append(helpers.current_lr(optimizer))
        optimizer.step()  # steps the schedule too
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(settings.lr) and 0.2 < peak / len(lrs) < 0.4
    assert lrs[0] < settings.lr / 10 and lrs[-1] < settings.lr / 1000
    plateau = engine.make_schedule(optimizer, helpers.course_recipe(smoke=True), 10)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_train_run_with_the_improved_recipe_learns_and_ends_its_schedule(small_sets, cpu, tmp_path):
    train, valid, _ = small_sets
    settings = helpers.course_recipe(smoke=True, name="improved", epochs=2, batch_size=64,
                                       train_size=512, valid_size=256, test_size=256)
    lines = []
    model, history, minutes = engine.train_run(settings, train, valid, cpu,
                                               run_dir=tmp_path / "run",
                                               best_path=tmp_path / "best.pt",
                                               last_path=tmp_path / "last.pt", log=lines.append)
    assert history.epochs == 2 and minutes > 0 and not history.stopped_early
    assert history.train_loss[-1] < history.train_loss[0]
    assert lines[0].startswith("recipe improved: improved (261,298 parameters)")
    state = helpers.read_checkpoint(tmp_path / "last.pt")["training_state"]
    assert state["scheduler"]["last_epoch"] == 2 * 8  # stepped per batch: 8 batches of 64, twice
    assert state["early_stopping"] is None  # a fixed-length schedule has no early stopping
    reloaded, meta = helpers.load_checkpoint(tmp_path / "last.pt")
    assert meta["model"] == "improved" and type(reloaded) is helpers.NETWORKS["improved"]
    assert meta["settings"]["label_smoothing"] == 0.1 and meta["settings"]["augment"]
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        # channels-last vs plain layout
        assert torch.allclose(reloaded(x), model.eval()(x), atol=1e-5)


def test_flip_tta_averages_each_image_with_its_mirror(small_sets, cpu):
    _, valid, _ = small_sets
    torch.manual_seed(0)
    model = helpers.build_model("improved").eval()
    loader = helpers.make_loader(valid, 128)
    loss_fn = nn.CrossEntropyLoss()
    loss, accuracy = helpers.evaluate(engine.FlipTTA(model), loader, loss_fn, cpu)
    with torch.no_grad():
        images, labels = map(torch.cat, zip(*loader))
        logits = (model(images) + model(images.flip(3))) / 2
    assert accuracy == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert loss == pytest.approx(loss_fn(logits, labels).item(), rel=1e-5)
    assert helpers.evaluate(model, loader, loss_fn, cpu)[0] != pytest.approx(loss, rel=1e-6)



def test_a_trial_reports_validation_figures_only_and_refuses_unknown_settings(data_root, tmp_path,
                                                                              capsys):
    """`python -m machinery.tools trial` is how recipes are chosen: it trains a variant and never
    touches the test set."""
    from machinery.tools import cli, trials
    assert trials.parse_overrides(["epochs=1", "lr=0.002", "optimizer=adamw", "augment=true"]) == \
        {"epochs": 1, "lr": 0.002, "optimizer": "adamw", "augment": True}
    with pytest.raises(ValueError,
                       match="not KEY=VALUE with KEY one of the settings: network, epochs"):
        trials.parse_overrides(["epoch=1"])
    with pytest.raises(ValueError, match="a final fit trains on them"):
        trials.trial("improved", {"final_fit": True}, smoke=True, out=tmp_path)
    command = ["trial", "original-fast", "epochs=2", "lr=0.002", "train_size=2000", "--smoke",
               "--out", str(tmp_path)]
    assert cli.main(command) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (report["overrides"] == {"epochs": 2, "lr": 0.002, "train_size": 2000}
            and report["epochs"] == 2)
    assert 0.3 < report["valid_accuracy_last"] <= 1 and not any("test" in key for key in report)
    last = Path(report["last_checkpoint"])
    assert last == tmp_path / "trial-original-fast-epochs2-lr0.002-train_size2000-smoke-last.pt"
    settings = helpers.read_checkpoint(last)["settings"]
    assert settings["lr"] == 0.002 and settings["fast"] and settings["train_size"] == 2000
    # a variant
    assert (helpers.read_checkpoint(last)["recipe"]
            == "trial-original-fast-epochs2-lr0.002-train_size2000")
    assert (tmp_path / "runs" / "trial-original-fast-epochs2-lr0.002-train_size2000-smoke").is_dir()


def test_a_reference_records_the_machine_its_checkpoint_trained_on(tmp_path, monkeypatch,
                                                                   loud_network):
    """The thread count a run had is part of its time: shipping it later on other settings keeps
    it."""
    from machinery.tools import trials
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        trained_on = helpers.machine()
        # a one-layer network: shipping evaluates it on the 10,000 test images in milliseconds
        checkpoint = helpers.save_checkpoint(tmp_path / "run.pt", helpers.build_model(loud_network),
                                             recipe="original", epoch=1,
                                             torch_version="2.11.0+cu130")  # e.g. Colab's
    finally:
        torch.set_num_threads(threads)
    assert helpers.read_checkpoint(checkpoint)["machine"] == trained_on
    monkeypatch.setattr(trials, "REFERENCE", tmp_path / "reference")
    monkeypatch.setattr(trials, "REPO_ROOT", tmp_path)  # it prints the path it wrote, from the root
    (tmp_path / "reference").mkdir()
    monkeypatch.setattr(helpers, "machine", lambda: "the shipping machine")
    shipped = trials.make_reference(checkpoint, "a command", 1.0, name="shipped")
    assert helpers.read_checkpoint(shipped)["reference"]["machine"] == trained_on
    assert helpers.read_checkpoint(shipped)["machine"] == trained_on
    assert helpers.read_checkpoint(shipped)["torch_version"] == "2.11.0+cu130"  # the trainer's


def test_a_reference_trained_beside_other_runs_says_so_where_its_time_is_quoted(
        tmp_path, monkeypatch, loud_network):
    """`reference --sharing N` reaches the shipped file, and the runtime note quoting its minutes
    says they were measured with N runs sharing the machine."""
    from machinery import colab
    from machinery.tools import cli, trials
    checkpoint = helpers.save_checkpoint(tmp_path / "run.pt", helpers.build_model(loud_network),
                                         recipe="original", epoch=1)
    monkeypatch.setattr(trials, "REFERENCE", tmp_path / "reference")
    monkeypatch.setattr(trials, "REPO_ROOT", tmp_path)
    (tmp_path / "reference").mkdir()
    assert cli.main(["reference", str(checkpoint), "29", "a command", "shared",
                     "--sharing", "2"]) == 0
    trials.make_reference(checkpoint, "a command", 12.0, name="alone")
    shared, alone = (tmp_path / "reference" / f"{name}.pt" for name in ("shared", "alone"))
    assert helpers.read_checkpoint(shared)["reference"]["runs_sharing"] == 2
    assert helpers.read_checkpoint(alone)["reference"]["runs_sharing"] == 1
    note = colab.runtime_note(torch.device("cpu"), shared)
    assert "took 29 min on" in note and "as one of 2 runs sharing that machine" in note
    assert "sharing" not in colab.runtime_note(torch.device("cpu"), alone)


def test_the_flip_tool_counts_on_the_validation_images_it_is_given(small_sets, cpu):
    from machinery.tools import trials
    _, valid_set, _ = small_sets
    checkpoint = helpers.REFERENCE / "improved.pt"
    counted = trials.flip_count(checkpoint, valid_set, cpu)
    model, _ = helpers.load_checkpoint(checkpoint, cpu)
    images = torch.stack([image for image, _ in valid_set])
    labels = torch.tensor([label for _, label in valid_set])
    with torch.no_grad():
        plain = model(images).argmax(1) == labels
        flipped = ((model(images) + model(images.flip(3))) / 2).argmax(1) == labels
    assert counted["valid_images"] == len(valid_set) == 256
    assert counted["valid_accuracy"] == pytest.approx(plain.float().mean().item())
    assert counted["valid_accuracy_flip"] == pytest.approx(flipped.float().mean().item())
    assert counted["fixed"] == int((flipped & ~plain).sum())
    assert counted["broken"] == int((plain & ~flipped).sum())
    assert counted["p"] == helpers.sign_test(counted["fixed"], counted["broken"])
    assert counted["keep_flip"] == (counted["fixed"] > counted["broken"] and counted["p"] < 0.05)


def test_the_flip_command_hands_over_the_validation_split(monkeypatch, capsys):
    from machinery.tools import cli, trials
    seen = []
    monkeypatch.setattr(trials, "flip_count",
                        lambda checkpoint, valid_set, device: seen.append(valid_set) or {"n": 1})
    assert cli.main(["flip", "reference/improved.pt", "reference/accurate.pt"]) == 0
    _, valid_set, _ = helpers.load_datasets(helpers.course_recipe(smoke=False))
    assert len(seen) == 2 and list(seen[0].indices) == list(valid_set.indices)
    assert capsys.readouterr().out.splitlines() == ['{"n": 1}'] * 2
