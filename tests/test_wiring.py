"""Wiring: every setting a recipe or a command-line flag declares reaches the object that uses it,
and the training, validation and test images reach exactly their roles, in every entry point.

Each test spies on what is built and handed over (the loaders train_one_epoch and evaluate
receive, the network, optimizer, schedule, loss, early stopping, the paths), not on the recipe:
a value read from the recipe and then dropped on the way would pass a test that reads the recipe.
Training is cut to two batches per epoch: the wiring is under test here, not the learning.
"""
import inspect
import time
import itertools
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, RandomSampler, Subset

import helpers
from machinery import cli, engine, recipes, runs, tensorboard_panels
from machinery.fast_path import DeviceLoader, dataset_tensors
from machinery.recipes import SMOKE_SIZES


class Spy:
    """Wraps functions and methods: records each call's arguments by name, then calls through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch

    def on(self, owner, name: str, through=None) -> list[dict]:
        real = getattr(owner, name)
        signature, calls = inspect.signature(real), []

        def spy(*args, **kwargs):
            calls.append(dict(signature.bind(*args, **kwargs).arguments))
            return (through or real)(*args, **kwargs)

        self.monkeypatch.setattr(owner, name, spy)
        return calls


class Wiring:
    """What a training run handed to the pieces that use the settings."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        spy = Spy(monkeypatch)
        real_train_one_epoch, real_build_model = helpers.train_one_epoch, helpers.build_model

        def two_batches(model, loader, loss_fn, optimizer, device):
            return real_train_one_epoch(model, itertools.islice(loader, 2), loss_fn, optimizer,
                                        device)

        def seeded_build(name="original"):
            self.seeds_at_build.append(torch.initial_seed())  # torch's seed as the weights draw
            return real_build_model(name)

        self.seeds_at_build = []
        self.seeds = spy.on(helpers, "seed_everything")
        self.builds = spy.on(helpers, "build_model", through=seeded_build)
        self.trains = spy.on(helpers, "train_one_epoch", through=two_batches)
        self.evaluations = spy.on(helpers, "evaluate")
        self.summaries = spy.on(tensorboard_panels, "validation_outputs")
        self.starts = spy.on(engine, "log_start")
        self.plateaus = spy.on(torch.optim.lr_scheduler.ReduceLROnPlateau, "__init__")
        self.plateau_steps = spy.on(torch.optim.lr_scheduler.ReduceLROnPlateau, "step")
        self.one_cycles = spy.on(torch.optim.lr_scheduler.OneCycleLR, "__init__")
        self.stoppers = spy.on(helpers.EarlyStopping, "__init__")
        self.stopper_steps = spy.on(helpers.EarlyStopping, "step")
        self.runs = spy.on(engine, "train_run")
        self.restores = spy.on(engine, "restore_training")
        self.matrices = spy.on(tensorboard_panels, "plot_confusion_matrix")
        self.devices = spy.on(cli, "pick_device")
        self.compiled = spy.on(engine, "compile_model", through=lambda model, device: model)

    @property
    def train_loader(self):
        loaders = {id(call["loader"]): call["loader"] for call in self.trains}
        assert len(loaders) == 1, "every epoch trains on the same loader"
        return next(iter(loaders.values()))


@pytest.fixture
def wiring(monkeypatch) -> Wiring:
    return Wiring(monkeypatch)


@pytest.fixture(autouse=True)
def nothing_outside_tmp_path(monkeypatch, tmp_path):
    """Smoke mode only where a test asks for it; a bug that drops --out or --runs writes into
    tmp_path, never over the repository's checkpoints/ and runs/."""
    monkeypatch.delenv("FMNIST_SMOKE", raising=False)
    monkeypatch.setattr(cli, "RUNS_ROOT", tmp_path / "default-runs")
    monkeypatch.setattr(runs, "checkpoint_paths", lambda recipe: recipes.checkpoint_paths(
        recipe, tmp_path / "default-checkpoints"))


def main(*args: str) -> int:
    """`python helpers.py ARGS`, in this process so the spies see inside it."""
    return cli.main([*args])


def images(data) -> torch.Tensor:
    """The uint8 images a dataset, a DataLoader or a DeviceLoader holds, in order."""
    loader = isinstance(data, (DataLoader, DeviceLoader))
    return dataset_tensors(data.dataset if loader else data)[0]


def role(data, sets: dict) -> str:
    """Which of the named image sets `data` holds exactly; fails if none or several."""
    held = images(data)
    matches = [name for name, dataset in sets.items()
               if images(dataset).shape == held.shape and torch.equal(images(dataset), held)]
    assert len(matches) == 1, f"the images match {matches or 'none'} of {list(sets)}"
    return matches[0]


def shuffled(loader) -> bool:
    if isinstance(loader, DeviceLoader):
        return loader.shuffle
    return isinstance(loader.sampler, RandomSampler)


def augmented(loader) -> bool:
    return isinstance(loader, DeviceLoader) and loader.augment


# Two recipes with a distinctive value for every setting, none of them a default: one on the
# original path (plateau schedule, early stopping, Adam), one on the fast path (one-cycle, AdamW,
# augmentation, label smoothing).
PLATEAU = dict(network="original", batch_size=24, lr=2e-3, optimizer="adam", weight_decay=1e-4,
               lr_factor=0.3, lr_patience=2, stop_patience=3, seed=5, label_smoothing=0.05,
               epochs=3)
ONE_CYCLE = dict(network="improved", fast=True, batch_size=48, lr=3e-3, optimizer="adamw",
                 weight_decay=0.02, schedule="onecycle", augment=True, label_smoothing=0.2,
                 seed=7, epochs=2)


@pytest.mark.parametrize("settings", [PLATEAU, ONE_CYCLE], ids=["plateau", "one-cycle"])
def test_train_run_hands_every_setting_to_what_uses_it(settings, wiring, small_sets,
                                                         small_recipe, tmp_path, cpu):
    recipe = replace(small_recipe, name="wired", **settings)
    train_set, valid_set, test_set = small_sets
    model, history, _ = engine.train_run(recipe, train_set, valid_set, cpu,
                                         run_dir=tmp_path / "run", log=lambda line: None)

    # the network asked for, its weights drawn after seeding; the seed's generator shuffles.
    # (A second, untrained copy is traced for TensorBoard's Graphs tab.)
    assert [call["name"] for call in wiring.builds] == [recipe.network] * 2
    assert type(model) is helpers.NETWORKS[recipe.network]
    assert [call["seed"] for call in wiring.seeds] == [recipe.seed]
    assert wiring.seeds_at_build == [recipe.seed] * 2
    loader = wiring.train_loader
    assert loader.generator is not None and loader.generator.initial_seed() == recipe.seed

    # batch size, shuffling, augmentation, the path; one training pass per epoch
    assert isinstance(loader, DeviceLoader if recipe.fast else DataLoader)
    assert loader.batch_size == recipe.batch_size and shuffled(loader)
    assert augmented(loader) == recipe.augment
    assert len(wiring.trains) == history.epochs == recipe.epochs

    # the network, optimizer and loss that train_one_epoch steps
    call = wiring.trains[0]
    assert call["model"] is model and call["device"] == cpu   # no mixed precision on a CPU
    optimizer = call["optimizer"]
    assert type(optimizer) is (torch.optim.AdamW if recipe.optimizer == "adamw"
                               else torch.optim.Adam)
    assert optimizer.param_groups[0]["weight_decay"] == recipe.weight_decay
    assert optimizer.param_groups[0]["params"] == list(model.parameters())
    loss_fn = call["loss_fn"]
    assert isinstance(loss_fn, nn.CrossEntropyLoss)
    assert loss_fn.label_smoothing == recipe.label_smoothing

    # the schedule and early stopping, built with the recipe's values and fed the validation loss
    if recipe.schedule == "plateau":
        assert optimizer.defaults["lr"] == recipe.lr and not wiring.one_cycles
        [plateau] = wiring.plateaus
        assert plateau["optimizer"] is optimizer
        assert (plateau["factor"], plateau["patience"]) == (recipe.lr_factor, recipe.lr_patience)
        assert [step["metrics"] for step in wiring.plateau_steps] == history.valid_loss
        [stopper] = wiring.stoppers
        assert stopper["patience"] == recipe.stop_patience
        assert [step["valid_loss"] for step in wiring.stopper_steps] == history.valid_loss
    else:
        assert not wiring.plateaus and not wiring.stoppers   # a fixed length: no early stop
        [one_cycle] = wiring.one_cycles
        assert one_cycle["optimizer"] is optimizer and one_cycle["max_lr"] == recipe.lr
        assert (one_cycle["epochs"], one_cycle["steps_per_epoch"]) == (recipe.epochs, len(loader))
        assert history.lr[0] < history.lr[1] < recipe.lr  # warming up, one step per batch

    # data roles: training images train, validation images validate and make the summary's
    # confusion matrix; the test images are never seen
    sets = {"train": train_set, "valid": valid_set, "test": test_set}
    assert role(loader, sets) == "train"
    validations = [call["loader"] for call in wiring.evaluations]
    assert len(validations) == recipe.epochs
    for valid_loader in validations:
        assert role(valid_loader, sets) == "valid"
        assert not shuffled(valid_loader) and not augmented(valid_loader)
        assert valid_loader.batch_size == 1000
    # TensorBoard's panels: the data grid, the summary's predictions
    assert [role(call["valid_loader"], sets) for call in wiring.starts] == ["valid"]
    assert [role(call["loader"], sets) for call in wiring.summaries] == ["valid"]
    assert [call["loss_fn"] for call in wiring.evaluations] == [loss_fn] * recipe.epochs
    assert {call["device"] for call in wiring.evaluations + wiring.summaries} == {cpu}
    # TensorBoard's confusion matrix: a row per true class, so its rows count the labels
    [matrix] = [call["matrix"] for call in wiring.matrices]
    labels = dataset_tensors(valid_set)[1]
    assert torch.equal(matrix.sum(dim=1), torch.bincount(labels, minlength=10))


def test_train_run_keeps_its_checkpoints_and_lines_where_asked(wiring, small_sets,
                                                              small_recipe, tmp_path, cpu,
                                                              capsys):
    recipe = replace(small_recipe, name="kept", epochs=2)
    lines, best_path, last_path = [], tmp_path / "best.pt", tmp_path / "last.pt"
    _, history, _ = engine.train_run(recipe, *small_sets[:2], cpu, run_dir=tmp_path / "run",
                                     best_path=best_path, last_path=last_path, log=lines.append)
    # the checkpoints record the recipe and their own epoch's figures
    for path, epoch in ((best_path, history.best_epoch), (last_path, history.epochs)):
        saved = helpers.load_checkpoint(path)[1]
        assert (saved["recipe"], saved["settings"], saved["epoch"]) == (
            recipe.name, recipe.as_dict(), epoch)
        assert saved["metrics"] == {"train_loss": history.train_loss[epoch - 1],
                                    "valid_loss": history.valid_loss[epoch - 1],
                                    "valid_accuracy": history.valid_accuracy[epoch - 1]}
    # every line goes where `log` says (a notebook's cell, a log file), nothing to the terminal
    assert lines[0].startswith("recipe kept:") and len(lines) > recipe.epochs
    assert capsys.readouterr().out == ""


def test_the_loaders_are_built_for_the_device_asked(small_sets, cpu):
    train_set, valid_set, _ = small_sets
    fast = helpers.course_recipe(smoke=True, name="original-fast")
    meta = torch.device("meta")  # holds no data: only where the tensors live is checked
    assert engine.make_train_loader(fast, train_set, torch.Generator(), meta).images.is_meta
    assert engine.make_eval_loader(fast, valid_set, meta).images.is_meta
    # the original path: a DataLoader pins batches in memory for a GPU's copy, not for a CPU
    plain, cuda = helpers.course_recipe(smoke=True), torch.device("cuda")
    assert engine.make_train_loader(plain, train_set, torch.Generator(), cuda).pin_memory
    assert engine.make_eval_loader(plain, valid_set, cuda).pin_memory
    assert not engine.make_train_loader(plain, train_set, torch.Generator(), cpu).pin_memory
    # a student may name the device by its string, as predict and load_checkpoint accept
    assert helpers.make_loader(valid_set, 64, device="cuda").pin_memory
    assert not helpers.make_loader(valid_set, 64, device="cpu").pin_memory


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "original"])
@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16])
def test_the_hardware_precision_reaches_the_training_step_on_the_fast_path_only(
        precision, fast, wiring, small_sets, small_recipe, tmp_path, cpu, monkeypatch):
    # a GPU's choice, forced: the CPU runs both types under autocast, slowly (two batches here)
    monkeypatch.setattr(engine, "mixed_precision", lambda device, cpu_bf16: precision)
    recipe = replace(small_recipe, name="precise", fast=fast, epochs=1, batch_size=32)
    model, _, _ = engine.train_run(recipe, *small_sets[:2], cpu, run_dir=tmp_path / "run",
                                   log=lambda line: None)
    [call] = wiring.trains
    # the Histograms tab names the network's own parameters, whatever wraps it for training
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"histograms": 0})
    histograms = set(events.Reload().Tags()["histograms"])
    assert histograms >= {f"weights/{name}" for name, _ in model.named_parameters()}
    assert not any(".model." in tag or "/model." in tag for tag in histograms)
    if not fast:  # the original path never changes precision
        assert call["model"] is model and isinstance(call["optimizer"], torch.optim.Adam)
        return
    assert isinstance(call["model"], engine.MixedPrecision)
    assert call["model"].model is model and call["model"].precision == precision
    stepper = call["optimizer"]
    if precision == torch.float16:  # fp16 steps through one enabled gradient scaler
        assert isinstance(stepper, engine.ScaledOptimizer) and stepper.scaler.is_enabled()
        assert call["model"].scaler is stepper.scaler
        assert stepper.optimizer.param_groups[0]["params"] == list(model.parameters())
    else:
        assert isinstance(stepper, torch.optim.Adam)


def test_resume_restores_into_the_runs_own_objects(wiring, small_sets, small_recipe,
                                                   tmp_path, cpu, monkeypatch):
    monkeypatch.setattr(engine, "mixed_precision",
                        lambda device, cpu_bf16: torch.float16)  # a T4's
    # one-cycle: its schedule's length must match the resumed run's, which it does here
    # the plateau schedule: the resumed run may train longer, one more epoch here
    recipe = replace(small_recipe, name="resumed", fast=True, epochs=1, batch_size=32)
    last = tmp_path / "last.pt"
    for epochs, resume in ((1, None), (2, last)):
        engine.train_run(replace(recipe, epochs=epochs), *small_sets[:2], cpu,
                         run_dir=tmp_path / "run", last_path=last, resume=resume,
                         log=lambda line: None)
    [restore] = wiring.restores
    first, resumed = wiring.trains  # epoch 1, then epoch 2 after the resume
    assert restore["path"] == last and restore["device"] == cpu
    assert restore["network"] == recipe.network
    # the saved scale goes into the scaler the resumed run trains with, not a new one
    assert restore["scaler"] is resumed["optimizer"].scaler
    assert restore["scaler"] is not first["optimizer"].scaler
    assert isinstance(restore["scaler"], torch.amp.GradScaler) and restore["scaler"].is_enabled()


def test_every_train_flag_reaches_the_run_and_each_set_its_role(wiring, data_root, tmp_path, cpu,
                                                                  capsys):
    out = tmp_path / "mine.pt"
    assert main("train", "--recipe", "improved", "--batch-size", "40", "--epochs", "2", "--smoke",
                "--out", str(out), "--runs", str(tmp_path / "runs"), "--data", str(data_root),
                "--device", "cpu") == 0
    [run] = wiring.runs
    assert run["recipe"] == helpers.course_recipe(smoke=True, name="improved", batch_size=40,
                                                    epochs=2)
    assert [call["name"] for call in wiring.devices] == ["cpu"] and run["device"] == cpu
    # the run's network, its copy for the Graphs tab, and its best checkpoint's, loaded back for
    # the test figures
    assert [call["name"] for call in wiring.builds] == ["improved"] * 3 and not wiring.compiled
    assert wiring.train_loader.batch_size == 40 and len(wiring.trains) == 2

    # output paths: the best checkpoint where --out says, the last beside it, the run in --runs
    assert run["best_path"] == out and run["last_path"] == tmp_path / "mine-last.pt"
    assert Path(run["run_dir"]).parent == tmp_path / "runs" and Path(run["run_dir"]).is_dir()

    # data roles, by the images each piece received: the smoke sizes of the course split
    train_set, valid_set, test_set = helpers.load_datasets(helpers.course_recipe(smoke=True),
                                                           data_root)
    sets = {"train": train_set, "valid": valid_set, "test": test_set}
    assert role(wiring.train_loader, sets) == "train"
    roles = [role(call["loader"], sets) for call in wiring.evaluations]
    assert roles == ["valid", "valid", "test", "test"]  # two epochs; the last and best on test
    assert [role(call["valid_loader"], sets) for call in wiring.starts] == ["valid"]
    assert [role(call["loader"], sets) for call in wiring.summaries] == ["valid"]
    # the test figures: plain cross-entropy (the recipe trains with label smoothing 0.1), for the
    # last epoch's network, then for the best checkpoint's, loaded back
    last, best = wiring.evaluations[2:]
    assert wiring.trains[0]["loss_fn"].label_smoothing == 0.1
    assert last["loss_fn"].label_smoothing == best["loss_fn"].label_smoothing == 0
    assert last["model"] is wiring.trains[0]["model"] and best["model"] is not last["model"]
    saved = helpers.load_checkpoint(out)[0].state_dict()
    assert all(torch.equal(saved[k], v) for k, v in best["model"].state_dict().items())
    assert f"test accuracy on {SMOKE_SIZES['test_size']:,} images" in capsys.readouterr().out


def test_fast_and_compile_flags_reach_the_network_and_the_loaders(wiring, data_root, tmp_path,
                                                                  cpu):
    assert main("train", "--fast", "--compile", "--epochs", "1", "--smoke",
                "--out", str(tmp_path / "fast.pt"), "--runs", str(tmp_path / "runs"),
                "--data", str(data_root), "--device", "cpu") == 0
    [run] = wiring.runs
    assert run["recipe"] == helpers.course_recipe(smoke=True, name="original-fast", epochs=1,
                                                    compile=True)
    [compiled] = wiring.compiled
    assert wiring.trains[0]["model"] is compiled["model"] and compiled["device"] == cpu
    loader = wiring.train_loader
    assert isinstance(loader, DeviceLoader) and loader.batch_size == 128 and not loader.augment
    assert all(isinstance(call["loader"], DeviceLoader) for call in wiring.evaluations)
    assert len(wiring.one_cycles) == 1 and not wiring.plateaus


def test_a_final_fit_keeps_no_best_checkpoint_and_reports_its_last_epoch(wiring, data_root,
                                                                         tmp_path):
    assert main("train", "--fast", "--final-fit", "--epochs", "1", "--smoke",
                "--out", str(tmp_path / "final.pt"), "--runs", str(tmp_path / "runs"),
                "--data", str(data_root), "--device", "cpu") == 0
    [run] = wiring.runs
    assert run["recipe"].final_fit and run["best_path"] is None
    _, valid_set, test_set = helpers.load_datasets(helpers.course_recipe(smoke=True), data_root)
    sets = {"valid": valid_set, "test": test_set}
    assert [role(call["loader"], sets) for call in wiring.evaluations] == ["valid", "test"]


class Stop(Exception):
    """Raised by a stand-in for train_run once it has seen what it needs: no training."""


@pytest.fixture
def stopped_run(monkeypatch) -> list[dict]:
    """train_run replaced by a recorder that stops the command: what the command handed over."""
    seen = []

    def record(recipe, train_set, valid_set, device, **paths):
        seen.append(dict(recipe=recipe, train_set=train_set, valid_set=valid_set, **paths))
        raise Stop

    monkeypatch.setattr(engine, "train_run", record)
    return seen


@pytest.mark.parametrize("flag, env, smoke", [
    ([], None, False), (["--smoke"], None, True), ([], "1", True), ([], "0", False),
    (["--smoke"], "0", True)])
def test_smoke_mode_comes_from_the_flag_or_the_environment(flag, env, smoke, data_root,
                                                           stopped_run, monkeypatch):
    if env is not None:
        monkeypatch.setenv("FMNIST_SMOKE", env)
    with pytest.raises(Stop):
        main("train", *flag, "--data", str(data_root), "--device", "cpu")
    [run] = stopped_run
    sizes = (len(run["train_set"]), len(run["valid_set"]))
    assert sizes == ((SMOKE_SIZES["train_size"], SMOKE_SIZES["valid_size"]) if smoke
                     else (50_000, 10_000))
    assert run["recipe"].epochs == (2 if smoke else 50)
    # a smoke run never writes over a real run's checkpoint
    assert run["best_path"].name == ("original-smoke.pt" if smoke else "original.pt")


def test_the_data_folder_flag_reaches_the_datasets(tmp_path, stopped_run):
    elsewhere = tmp_path / "elsewhere"  # filled from the local copy, as a first run would
    with pytest.raises(Stop):
        main("train", "--smoke", "--data", str(elsewhere), "--device", "cpu")
    [run] = stopped_run
    for subset in (run["train_set"], run["valid_set"]):
        while isinstance(subset, Subset):
            subset = subset.dataset
        assert Path(subset.root) == elsewhere


def test_resume_carries_the_runs_settings_paths_and_tensorboard_folder(wiring, data_root,
                                                                       tmp_path):
    first = tmp_path / "first.pt"
    common = ("--data", str(data_root), "--device", "cpu")
    assert main("train", "--batch-size", "40", "--epochs", "1", "--smoke", "--out", str(first),
                "--runs", str(tmp_path / "runs"), *common) == 0
    last = tmp_path / "first-last.pt"
    # resumed for one more epoch (a --runs or --out here is refused: the run keeps its files)
    assert main("train", "--resume", str(last), "--epochs", "2", *common) == 0
    started, resumed = wiring.runs
    assert Path(resumed["resume"]) == last
    assert resumed["recipe"] == replace(started["recipe"], epochs=2)
    assert resumed["best_path"] == first and resumed["last_path"] == last
    assert resumed["run_dir"] == started["run_dir"]            # the same TensorBoard curves
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [Path(started["run_dir"]).name]
    # one epoch more, on a loader of the run's batch size
    assert len(wiring.trains) == 2 and wiring.trains[1]["loader"].batch_size == 40
    assert helpers.load_checkpoint(last)[1]["epoch"] == 2


def test_fit_trains_on_its_first_loader_and_validates_on_its_second(wiring, small_sets, cpu):
    train_set, valid_set, test_set = small_sets
    model = helpers.build_model("original")
    optimizer = helpers.make_optimizer(model, helpers.course_recipe())
    train_loader = helpers.make_loader(train_set, 32, shuffle=True)
    valid_loader = helpers.make_loader(valid_set, 256)
    history = helpers.fit(model, train_loader, valid_loader, nn.CrossEntropyLoss(), optimizer,
                          helpers.make_scheduler(optimizer, helpers.course_recipe()), cpu,
                          epochs=2, patience=3, log=lambda line: None)
    sets = {"train": train_set, "valid": valid_set, "test": test_set}
    assert [role(call["loader"], sets) for call in wiring.trains] == ["train", "train"]
    assert [role(call["loader"], sets) for call in wiring.evaluations] == ["valid", "valid"]
    # patience reaches early stopping; both it and the scheduler watch the validation loss
    assert [call["patience"] for call in wiring.stoppers] == [3]
    assert [step["valid_loss"] for step in wiring.stopper_steps] == history.valid_loss
    assert [step["metrics"] for step in wiring.plateau_steps] == history.valid_loss


def test_evaluate_command_scores_checkpoints_on_the_whole_test_set(wiring, data_root, capsys,
                                                                   monkeypatch, tmp_path,
                                                                   loud_network):
    monkeypatch.setenv("FMNIST_SMOKE", "1")  # a checkpoint's test figures are never a sample
    checkpoint = engine.save(tmp_path / "loud.pt", helpers.build_model(loud_network),
                             helpers.course_recipe(smoke=True, network=loud_network), 1, {})
    assert main("evaluate", str(checkpoint), "--data", str(data_root), "--device", "cpu") == 0
    _, _, test_set = helpers.load_datasets(helpers.course_recipe(smoke=False), data_root)
    [call] = wiring.evaluations
    assert torch.equal(images(call["loader"]), images(test_set))
    assert "on 10,000 images" in capsys.readouterr().out
    assert [c["name"] for c in wiring.devices] == ["cpu"]  # --device reaches the evaluation


def script_validation(monkeypatch, figures: list[tuple[float, float]]):
    """helpers.evaluate answers the first calls with `figures` (loss, accuracy), one per epoch's
    validation, and the later ones (the test set) for real; returns the real evaluate."""
    real, scripted = helpers.evaluate, iter(figures)

    def validation_scripted(model, loader, loss_fn, device):
        return next(scripted, None) or real(model, loader, loss_fn, device)

    monkeypatch.setattr(helpers, "evaluate", validation_scripted)
    return real


def test_train_reports_the_best_epochs_checkpoint_not_the_last(wiring, data_root, tmp_path, cpu,
                                                                monkeypatch):
    """Validation scripted so that epoch 1 of 2 is the best: the report's best figures are those
    of the best checkpoint, read back from its file, and its epoch is 1."""
    real = script_validation(monkeypatch, [(0.5, 0.9), (0.6, 0.4)])
    evaluations = Spy(monkeypatch).on(helpers, "evaluate")
    loads = Spy(monkeypatch).on(helpers, "load_checkpoint")
    recipe = helpers.course_recipe(smoke=True, name="original-fast", epochs=2, test_size=300)
    out = tmp_path / "mine.pt"
    report = runs.train(recipe, cpu, data=data_root, runs=tmp_path / "runs", out=out,
                        log=lambda line: None)
    assert report["best_epoch"] == 1 and report["epochs"] == 2
    assert report["last"][2] == str(tmp_path / "mine-last.pt") and report["best"][2] == str(out)
    # the last and the best network tested on the run's device, the best read back onto it
    assert [call["device"] for call in evaluations[-2:]] == [cpu, cpu]
    assert [(call["path"], call["device"]) for call in loads] == [(out, cpu)]
    assert report["test_images"] == 300 and report["train_images"] == SMOKE_SIZES["train_size"]
    best, last = (helpers.load_checkpoint(path)[0] for path in (out, tmp_path / "mine-last.pt"))
    assert helpers.read_checkpoint(out)["epoch"] == 1
    test_loader = engine.make_eval_loader(recipe, helpers.load_datasets(recipe, data_root)[2], cpu)
    for name, model in (("best", best), ("last", last)):
        assert report[name][:2] == real(engine.evaluated(model, recipe, cpu), test_loader,
                                        nn.CrossEntropyLoss(), cpu), name
    assert report["best"][:2] != report["last"][:2]  # two different networks


def test_train_reports_the_epochs_a_run_stopped_early_at(wiring, data_root, tmp_path, cpu,
                                                        monkeypatch):
    script_validation(monkeypatch, [(0.5, 0.3), (0.6, 0.2)])  # the loss rises: stop
    recipe = helpers.course_recipe(smoke=True, epochs=6, stop_patience=1)
    report = runs.train(recipe, cpu, data=data_root, runs=tmp_path / "runs",
                        out=tmp_path / "mine.pt", log=lambda line: None)
    assert report["epochs"] == 2 and report["stopped_early"] and report["best_epoch"] == 1


def test_train_stops_on_ctrl_c_instead_of_reporting_half_a_run(data_root, tmp_path, cpu,
                                                             ctrl_c_in_epoch):
    ctrl_c_in_epoch(1)
    with pytest.raises(runs.RunInterrupted) as interrupt:
        runs.train(helpers.course_recipe(smoke=True, name="original-fast"), cpu, data=data_root,
                   runs=tmp_path / "runs", out=tmp_path / "mine.pt", log=lambda line: None)
    assert interrupt.value.last_path is None  # no epoch finished: nothing to carry on from


def test_train_interrupted_after_an_epoch_names_its_last_checkpoint(data_root, tmp_path, cpu,
                                                                    ctrl_c_in_epoch):
    ctrl_c_in_epoch(2)
    with pytest.raises(runs.RunInterrupted) as interrupt:
        runs.train(helpers.course_recipe(smoke=True, name="original-fast"), cpu, data=data_root,
                   runs=tmp_path / "runs", out=tmp_path / "mine.pt", log=lambda line: None)
    assert interrupt.value.last_path == tmp_path / "mine-last.pt"
    assert helpers.read_checkpoint(interrupt.value.last_path)["epoch"] == 1


# ---- What mutmut's survivors of machinery/runs.py showed untested -------------------------------

def test_a_resumed_run_that_kept_no_paths_uses_the_defaults(stopped_run, tmp_path,
                                                              data_root, cpu):
    """A last checkpoint that recorded no best checkpoint and no TensorBoard folder: the run
    carries on with the command's own."""
    recipe = helpers.course_recipe(smoke=True)
    with pytest.raises(Stop):
        runs.train(recipe, cpu, data=data_root, runs=tmp_path / "runs", out=tmp_path / "mine.pt",
                   resume=tmp_path / "mine-last.pt", state={"best_path": None, "run_dir": None})
    [handed] = stopped_run
    assert handed["best_path"] == tmp_path / "mine.pt"
    assert handed["last_path"] == tmp_path / "mine-last.pt"
    assert handed["run_dir"].parent == tmp_path / "runs"
    assert handed["run_dir"].name.startswith(recipes.run_name(recipe)[:-15])  # less the time


def test_a_final_fit_keeps_no_best_checkpoint_and_says_why(stopped_run, tmp_path,
                                                           data_root, cpu):
    lines = []
    with pytest.raises(Stop):
        runs.train(helpers.course_recipe(smoke=True, name="original-fast", final_fit=True), cpu,
                   data=data_root, runs=tmp_path / "runs", out=tmp_path / "mine.pt",
                   log=lines.append)
    assert stopped_run[0]["best_path"] is None
    assert lines == ["final fit: the validation images are in the training set, so the "
                     "validation figures below are not an estimate of test accuracy"]


def test_resume_takes_only_epochs_and_compile_from_the_command(tmp_path):
    recipe = helpers.course_recipe(smoke=True)
    engine.save(tmp_path / "last.pt", helpers.build_model("original"), recipe, 1, {},
                training_state={"history": {}})
    resumed, state = runs.resumed_recipe(tmp_path / "last.pt", epochs=9, compile=True,
                                         batch_size=None, fast=False)
    assert resumed == replace(recipe, epochs=9, compile=True) and state == {"history": {}}
    # nothing asked (no --epochs, no --compile): the recorded recipe as it was
    assert runs.resumed_recipe(tmp_path / "last.pt", epochs=None, compile=False)[0] == recipe
    with pytest.raises(ValueError) as refused:  # anything else is refused, not dropped
        runs.resumed_recipe(tmp_path / "last.pt", epochs=9, batch_size=7, lr=0.5)
    assert str(refused.value) == ("a resumed run keeps its recipe and files: batch_size, lr "
                                  "cannot change (only epochs and compile may)")
    # a checkpoint with a training state but no recipe is not a run's last checkpoint
    helpers.save_checkpoint(tmp_path / "odd.pt", helpers.build_model("original"),
                            training_state={"history": {}})
    with pytest.raises(helpers.CheckpointError) as error:
        runs.resumed_recipe(tmp_path / "odd.pt")
    assert str(error.value) == (f"{tmp_path / 'odd.pt'} is not the last checkpoint of a run: "
                                f"nothing to resume")


def test_resume_and_evaluate_name_the_file_whose_recipe_cannot_be_read(tmp_path, cpu, data_root):
    path = tmp_path / "old-last.pt"
    helpers.save_checkpoint(path, helpers.build_model("original"), training_state={"history": {}},
                            settings={"name": "x", "warp": 9})  # a setting the course never had
    named = f"^{re.escape(str(path))}: its recorded recipe cannot be read"
    with pytest.raises(helpers.CheckpointError, match=named):
        runs.resumed_recipe(path)
    with pytest.raises(helpers.CheckpointError, match=named):
        next(runs.evaluate_checkpoints([path], cpu, data_root))


def test_train_with_nothing_asked_is_the_original_recipe_at_full_size(monkeypatch):
    monkeypatch.delenv("FMNIST_SMOKE", raising=False)
    assert runs.choose_recipe() == helpers.course_recipe("original", smoke=False)
    assert runs.choose_recipe("improved") == helpers.course_recipe("improved", smoke=False)


def test_evaluate_reports_each_checkpoint_on_the_whole_test_set(monkeypatch, tmp_path, data_root,
                                                                cpu, loud_network):
    spy = Spy(monkeypatch)
    loads = spy.on(helpers, "load_checkpoint")
    datasets = spy.on(helpers, "load_datasets")
    loaders = spy.on(runs, "DeviceLoader")
    evaluations = spy.on(helpers, "evaluate")
    # a one-layer network: the 10,000 images in milliseconds, not seconds
    recipe = helpers.course_recipe(smoke=True, network=loud_network)
    model = helpers.build_model(loud_network)
    engine.save(tmp_path / "one.pt", model, recipe, 3, {})
    before = time.perf_counter()
    [report] = runs.evaluate_checkpoints([tmp_path / "one.pt"], cpu, data_root)
    took = time.perf_counter() - before
    assert [call["device"] for call in loads] == [cpu]
    assert [call["root"] for call in datasets] == [data_root]
    assert [(call["batch_size"], call["device"]) for call in loaders] == [(64, cpu)]  # a CPU's
    assert [call["device"] for call in evaluations] == [cpu]
    model.eval()
    test_set = helpers.load_datasets(helpers.course_recipe(smoke=False), data_root)[2]
    expected = helpers.evaluate(model, helpers.make_loader(test_set, 1000), nn.CrossEntropyLoss(),
                                cpu)
    seconds = report.pop("seconds")
    assert report == {"checkpoint": str(tmp_path / "one.pt"), "model": loud_network,
                      "recipe": recipe.name, "params": 28 * 28 * 10 + 10,
                      "test_accuracy": pytest.approx(expected[1]),
                      "test_loss": pytest.approx(expected[0], rel=1e-5), "test_images": 10_000,
                      "epoch": 3, "device": "cpu", "flip_tta": False}
    assert isinstance(seconds, float) and 0 < seconds < took and seconds == round(seconds, 2)
