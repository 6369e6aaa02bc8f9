"""Interrupted training loses nothing and resumes to exactly the same result."""
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import helpers
from machinery import engine, resume
from machinery.fast_path import DeviceLoader
from test_training import small_run


def test_resumed_run_ends_with_the_same_weights(small_sets, small_recipe, tmp_path):
    straight, straight_history, _ = small_run(small_sets, small_recipe, tmp_path, epochs=4)

    small_run(small_sets, small_recipe, tmp_path, epochs=2, last_path=tmp_path / "last.pt",
              best_path=tmp_path / "best.pt")                      # "interrupted" after epoch 2
    # fresh objects, as after a restart
    resumed, resumed_history, lines = small_run(
        small_sets, small_recipe, tmp_path, epochs=4, last_path=tmp_path / "last.pt",
        best_path=tmp_path / "best.pt", resume=tmp_path / "last.pt")

    assert lines[0].startswith("resumed from") and "after epoch 2" in lines[0]
    assert len(lines) == 3  # the resume line and epochs 3 and 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_history.train_loss == straight_history.train_loss
    assert resumed_history.valid_accuracy == straight_history.valid_accuracy
    assert helpers.load_checkpoint(tmp_path / "last.pt")[1]["epoch"] == 4


def test_ctrl_c_ends_the_run_cleanly_with_checkpoints_intact(small_sets, small_recipe, tmp_path,
                                                             ctrl_c_in_epoch):
    ctrl_c_in_epoch(3)
    _, history, lines = small_run(small_sets, small_recipe, tmp_path, epochs=5,
                                  last_path=tmp_path / "last.pt", best_path=tmp_path / "best.pt")
    assert history.interrupted and history.epochs == 2
    assert "interrupted during epoch 3" in lines[-1]
    assert lines[-1].endswith(f"continue with train_run(..., resume={str(tmp_path / 'last.pt')!r})")
    assert resume.interrupted_note(1, tmp_path / "last.pt").endswith("there is no checkpoint yet")
    assert helpers.load_checkpoint(tmp_path / "last.pt")[1]["epoch"] == 2
    helpers.load_checkpoint(tmp_path / "best.pt")


def test_fp16_scale_carries_over_between_epochs_and_into_the_last_checkpoint(
        small_sets, tmp_path, monkeypatch, loud_network):
    # the runner makes one gradient scaler per run: a fresh one each epoch would skip the first
    # updates of every epoch again while it finds its scale, and a resumed run would not repeat
    train_set, valid_set, _ = small_sets
    recipe = helpers.course_recipe(smoke=True, name="improved", batch_size=64, epochs=2,
                                     network=loud_network)
    steppers = []
    real_train_one_epoch = helpers.train_one_epoch

    def spy(model, loader, loss_fn, optimizer, device):
        steppers.append(optimizer)
        return real_train_one_epoch(model, loader, loss_fn, optimizer, device)

    monkeypatch.setattr(helpers, "train_one_epoch", spy)
    cpu = torch.device("cpu")
    helpers.seed_everything(0)
    model, optimizer, scheduler, loss_fn = engine.make_training(recipe, cpu, steps_per_epoch=2)
    loader = DeviceLoader(helpers.first(train_set, 128), 64, shuffle=True,
                          generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(engine, "mixed_precision",
                        lambda device, cpu_bf16: torch.float16)  # a T4's choice
    engine.run_epochs(model, loader, DeviceLoader(helpers.first(valid_set, 64), 64), recipe,
                      optimizer, scheduler, loss_fn, cpu, last_path=tmp_path / "last.pt",
                      log=lambda line: None)
    scalers = [stepper.scaler for stepper in steppers]
    assert len(scalers) == 2 and scalers[0] is scalers[1] and scalers[0].is_enabled()
    saved = helpers.read_checkpoint(tmp_path / "last.pt")["training_state"]["scaler"]
    assert saved["scale"] == scalers[0].get_scale() < 2.0 ** 16

    fresh = torch.amp.GradScaler("cpu")
    model, optimizer, scheduler, _ = engine.make_training(recipe, cpu, steps_per_epoch=2)
    resume.restore_training(tmp_path / "last.pt", loud_network, model, optimizer, scheduler, None,
                            loader, cpu, fresh, log=lambda line: None)
    assert fresh.get_scale() == scalers[0].get_scale()
    # a last checkpoint saved before the scale was kept: resumed, with a fresh scale
    payload = torch.load(tmp_path / "last.pt", weights_only=True)
    del payload["training_state"]["scaler"]
    torch.save(payload, tmp_path / "older.pt")
    older = torch.amp.GradScaler("cpu")
    resume.restore_training(tmp_path / "older.pt", loud_network, model, optimizer, scheduler, None,
                            loader, cpu, older, log=lambda line: None)
    assert older.get_scale() == 2.0 ** 16


def test_resume_needs_a_last_checkpoint(small_sets, small_recipe, tmp_path):
    helpers.save_checkpoint(tmp_path / "weights.pt", helpers.build_model("original"))
    with pytest.raises(helpers.CheckpointError, match="no training state to resume from"):
        small_run(small_sets, small_recipe, tmp_path, epochs=2, resume=tmp_path / "weights.pt")


def test_killed_training_process_leaves_loadable_checkpoints_and_resumes(tmp_path, data_root):
    out = tmp_path / "killed.pt"
    command = [sys.executable, str(helpers.REPO_ROOT / "helpers.py"), "train", "--smoke", "--fast",
               "--epochs", "3", "--out", str(out), "--runs", str(tmp_path / "runs"),
               "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = out.with_name("killed-last.pt")
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # Killed at once: a smoke epoch takes under a second on a fast CPU (2026-12-06, Intel Xeon),
    # so a pause here could let the run finish. No chance to clean up: like a recycled runtime.
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"

    _, last_meta = helpers.load_checkpoint(last)
    _, best_meta = helpers.load_checkpoint(out)
    killed_after = last_meta["epoch"]
    assert killed_after in (1, 2), "the run got to its last epoch before it could be killed"
    assert 1 <= best_meta["epoch"] <= killed_after

    resumed = subprocess.run(command[:2] + ["train", "--resume", str(last), "--device", "cpu"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch   3/3" in resumed.stdout
    assert f"epoch   {killed_after}/3" not in resumed.stdout
    assert f"epoch   {killed_after + 1}/3" in resumed.stdout
    assert helpers.load_checkpoint(last)[1]["epoch"] == 3
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1  # the resumed run continued in the same TensorBoard run


# Scripted validation figures, by epoch: the loss improves to 0.8 at epoch 3, ties it at epoch 4
# (not an improvement) and then drifts up; the accuracy peaks at 0.7 in epoch 3 and ties it at
# epoch 4 (the earlier epoch stays the best). So the plateau scheduler cuts the rate after epoch 8
# (its 5th epoch without progress), early stopping ends the run at epoch 10 (its 7th), and epoch 3
# holds the best checkpoint. A resume after epoch 5 must repeat every one of these decisions.
SCRIPTED_LOSS = [1.0, 0.9, 0.8, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91, 0.92, 0.93, 0.94]
SCRIPTED_ACCURACY = [0.5, 0.6, 0.7, 0.7, 0.65, 0.66, 0.67, 0.68, 0.69, 0.69, 0.69, 0.69, 0.69, 0.69]


def scripted_evaluate(first_epoch: int):
    """helpers.evaluate replaced by the scripted figures, starting at `first_epoch`."""
    epochs = iter(range(first_epoch - 1, len(SCRIPTED_LOSS)))

    def evaluate(*args, **kwargs):
        epoch = next(epochs)
        return SCRIPTED_LOSS[epoch], SCRIPTED_ACCURACY[epoch]
    return evaluate


def test_a_resumed_original_recipe_repeats_the_drops_the_stop_and_the_best_checkpoint(
        small_sets, small_recipe, tmp_path, monkeypatch):
    train_set, valid_set, test_set = small_sets
    # 2 steps an epoch
    tiny = (helpers.first(train_set, 64), helpers.first(valid_set, 32), test_set)
    monkeypatch.setattr(helpers, "evaluate", scripted_evaluate(1))
    straight, straight_history, _ = small_run(tiny, small_recipe, tmp_path / "a", epochs=30,
                                              best_path=tmp_path / "a" / "best.pt",
                                              last_path=tmp_path / "a" / "last.pt")
    assert (straight_history.epochs == 10 and straight_history.stopped_early
            and straight_history.best_epoch == 3)
    assert straight_history.lr == [1e-3] * 8 + [pytest.approx(1e-4)] * 2

    paths = dict(best_path=tmp_path / "b" / "best.pt", last_path=tmp_path / "b" / "last.pt")
    monkeypatch.setattr(helpers, "evaluate", scripted_evaluate(1))
    # "interrupted" after epoch 5
    small_run(tiny, small_recipe, tmp_path / "b", epochs=5, **paths)
    monkeypatch.setattr(helpers, "evaluate", scripted_evaluate(6))
    resumed, resumed_history, lines = small_run(tiny, small_recipe, tmp_path / "b", epochs=30,
                                                resume=paths["last_path"], **paths)
    for field in ("lr", "valid_loss", "valid_accuracy", "train_loss", "best_epoch",
                  "stopped_early"):
        assert getattr(resumed_history, field) == getattr(straight_history, field), field
    assert helpers.load_checkpoint(paths["best_path"])[1]["epoch"] == 3  # epochs 6-10 never beat it
    assert helpers.load_checkpoint(paths["last_path"])[1]["epoch"] == 10
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert any("learning rate reduced" in line for line in lines) and "early stop" in lines[-1]


def test_resuming_a_run_that_stopped_early_trains_no_more(small_sets, small_recipe, tmp_path,
                                                          monkeypatch):
    train_set, valid_set, test_set = small_sets
    tiny = (helpers.first(train_set, 64), helpers.first(valid_set, 32), test_set)
    monkeypatch.setattr(helpers, "evaluate", scripted_evaluate(1))
    small_run(tiny, small_recipe, tmp_path, epochs=30, last_path=tmp_path / "last.pt")
    _, history, lines = small_run(tiny, small_recipe, tmp_path, epochs=30,
                                  resume=tmp_path / "last.pt")
    assert history.epochs == 10 and history.stopped_early
    assert lines == [f"resumed from {tmp_path / 'last.pt'} after epoch 10: "
                     f"that run had already stopped early, "
                     f"nothing left to do"]


def test_a_one_cycle_run_resumes_for_its_own_length_only(small_sets, tmp_path):
    """One-cycle plans its whole length up front: stretching it on resume would crash mid-run
    (PyTorch: 'Tried to step 3 times'), and shortening it would stop mid-schedule, so the runner
    says so before training."""
    train_set, valid_set, _ = small_sets
    recipe = helpers.course_recipe(smoke=True, name="original-fast", epochs=2, batch_size=128)
    sets = helpers.first(train_set, 256), helpers.first(valid_set, 128)
    run = dict(run_dir=tmp_path / "run", last_path=tmp_path / "last.pt", log=lambda line: None)
    engine.train_run(recipe, *sets, torch.device("cpu"), **run)
    named = re.escape(str(tmp_path / "last.pt"))  # the refusal names the file given
    for epochs in (3, 1):  # longer, shorter
        with pytest.raises(helpers.CourseError,
                           match=f"^{named} is a one-cycle run of 2 epochs: its schedule ends"):
            engine.train_run(replace(recipe, epochs=epochs), *sets, torch.device("cpu"),
                             resume=tmp_path / "last.pt", **run)
    # its own length is taken: the run is complete, so nothing is trained
    _, history, _ = engine.train_run(recipe, *sets, torch.device("cpu"),
                                     resume=tmp_path / "last.pt", **run)
    assert history.epochs == 2 and len(history.train_loss) == 2


# ---- The pieces of resume, one by one (mutmut's survivors of machinery/resume.py) ----------------

class Recorder:
    """Stands in for a scheduler, a gradient scaler or a CUDA call: records what it is given."""

    def __init__(self, state=None) -> None:
        self.loaded, self.state = [], state

    def load_state_dict(self, state) -> None:
        self.loaded.append(state)

    def state_dict(self):
        return self.state


@pytest.fixture(scope="module")
def trained_last(small_sets, small_recipe, tmp_path_factory):
    """A real last checkpoint of the original recipe after 2 short epochs (plateau, early
    stopping)."""
    train_set, valid_set, test_set = small_sets
    tiny = (helpers.first(train_set, 64), helpers.first(valid_set, 32), test_set)
    folder = tmp_path_factory.mktemp("trained")
    small_run(tiny, small_recipe, folder, epochs=2, last_path=folder / "last.pt")
    return folder / "last.pt"


@pytest.fixture
def last_checkpoint(trained_last, tmp_path):
    """A copy of it, each test's own to change."""
    return Path(shutil.copy(trained_last, tmp_path / "last.pt"))


def fresh_objects(small_recipe):
    model = helpers.build_model("original")
    optimizer = helpers.make_optimizer(model, small_recipe)
    return model, optimizer, helpers.make_scheduler(optimizer, small_recipe)


def draw_from_every_generator(loader) -> tuple:
    return (torch.rand(3), random.random(), np.random.rand(3),
            torch.rand(3, generator=loader.generator))


def test_generators_come_back_exactly():
    loader = SimpleNamespace(generator=torch.Generator().manual_seed(5))
    state = resume.rng_state(loader)
    drawn = draw_from_every_generator(loader)
    resume.set_rng_state(state, loader)
    again = draw_from_every_generator(loader)
    assert torch.equal(drawn[0], again[0]) and drawn[1] == again[1]
    assert np.array_equal(drawn[2], again[2]) and torch.equal(drawn[3], again[3])

    # a loader without a generator of its own: nothing saved, nothing put back
    assert resume.rng_state(SimpleNamespace(generator=None))["loader"] is None
    untouched = torch.Generator().manual_seed(9)
    before = untouched.get_state()
    resume.set_rng_state({**state, "loader": None}, SimpleNamespace(generator=untouched))
    assert torch.equal(untouched.get_state(), before)


def test_cuda_generators_are_saved_and_put_back_when_there_is_a_gpu(monkeypatch):
    cuda_state = [torch.arange(8, dtype=torch.uint8)]
    put_back = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", put_back.append)
    loader = SimpleNamespace(generator=None)
    state = resume.rng_state(loader)
    assert state["cuda"] is cuda_state
    resume.set_rng_state(state, loader)
    assert len(put_back) == 1 and torch.equal(put_back[0][0], cuda_state[0])
    resume.set_rng_state({**state, "cuda": []}, loader)  # saved on a machine without a GPU
    assert len(put_back) == 1


def test_training_state_records_no_best_path_and_no_scheduler_as_none():
    model = helpers.build_model("original")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = resume.training_state(optimizer, None, None, helpers.History(),
                                  SimpleNamespace(generator=None))
    assert state["best_path"] is None and state["scheduler"] is None
    assert state["early_stopping"] is None and state["run_dir"] is None


def test_restore_reads_on_the_device_it_is_given(last_checkpoint, small_recipe, monkeypatch):
    read = []
    real_read = resume.read_checkpoint
    monkeypatch.setattr(resume, "read_checkpoint",
                        lambda path, device: read.append(device) or real_read(path, device))
    model, optimizer, scheduler = fresh_objects(small_recipe)
    device = torch.device("cpu")
    resume.restore_training(last_checkpoint, "original", model, optimizer, scheduler, None,
                            SimpleNamespace(generator=None), device, log=lambda line: None)
    assert read == [device]


def test_restore_says_which_network_a_checkpoint_belongs_to(last_checkpoint, small_recipe):
    model = helpers.build_model("improved")
    optimizer = helpers.make_optimizer(model, small_recipe)
    with pytest.raises(helpers.CheckpointError) as error:
        resume.restore_training(last_checkpoint, "improved", model, optimizer, None, None,
                                SimpleNamespace(generator=None), "cpu", log=lambda line: None)
    assert str(error.value) == (f"{last_checkpoint} is a run of the 'original' network, "
                                f"not 'improved'")


def test_restore_names_the_file_whose_weights_do_not_fit(last_checkpoint, small_recipe):
    payload = torch.load(last_checkpoint, weights_only=True)
    del payload["state_dict"]["linear2.bias"]
    torch.save(payload, last_checkpoint)
    model, optimizer, scheduler = fresh_objects(small_recipe)
    with pytest.raises(helpers.CheckpointError, match=str(last_checkpoint)):
        resume.restore_training(last_checkpoint, "original", model, optimizer, scheduler, None,
                                SimpleNamespace(generator=None), "cpu", log=lambda line: None)


def test_restore_says_when_a_part_of_the_training_state_is_missing(last_checkpoint,
                                                                    small_recipe):
    payload = torch.load(last_checkpoint, weights_only=True)
    del payload["training_state"]["scheduler"]  # e.g. a hand-edited or foreign file
    torch.save(payload, last_checkpoint)
    model, optimizer, scheduler = fresh_objects(small_recipe)
    with pytest.raises(helpers.CheckpointError) as error:
        resume.restore_training(last_checkpoint, "original", model, optimizer, scheduler, None,
                                SimpleNamespace(generator=None), "cpu", log=lambda line: None)
    assert str(error.value) == (f"{last_checkpoint}: its optimizer or scheduler state does not "
                                f"fit this run ('scheduler')")


def test_restore_says_when_the_optimizer_state_does_not_fit(last_checkpoint, small_recipe):
    model = helpers.build_model("original")
    optimizer = torch.optim.Adam([model.linear2.bias])  # one parameter group, one parameter
    with pytest.raises(helpers.CheckpointError) as error:
        resume.restore_training(last_checkpoint, "original", model, optimizer, None, None,
                                SimpleNamespace(generator=None), "cpu", log=lambda line: None)
    assert str(error.value).startswith(f"{last_checkpoint}: its optimizer or scheduler state does "
                                       f"not fit this run (")


def test_restore_puts_back_only_what_both_sides_have(last_checkpoint, small_recipe):
    """A schedule, a gradient scaler or early stopping is put back only where the run has one
    and the checkpoint saved one."""
    payload = torch.load(last_checkpoint, weights_only=True)
    state = payload["training_state"]
    assert state["scheduler"] is not None and state["early_stopping"] is not None
    assert state["scaler"] is None  # trained in float32
    model, optimizer, _ = fresh_objects(small_recipe)
    scaler = Recorder()
    # the run has no schedule and no early stopping; the checkpoint has no scaler
    history = resume.restore_training(last_checkpoint, "original", model, optimizer, None, None,
                                      SimpleNamespace(generator=None), "cpu", scaler,
                                      log=lambda line: None)
    assert scaler.loaded == [] and len(history["train_loss"]) == 2
    # the checkpoint has no schedule and no early stopping; the run has both
    payload["training_state"] = {**state, "scheduler": None, "early_stopping": None}
    torch.save(payload, last_checkpoint)
    model, optimizer, scheduler = fresh_objects(small_recipe)
    stopper = helpers.EarlyStopping(small_recipe.stop_patience)
    resume.restore_training(last_checkpoint, "original", model, optimizer, scheduler, stopper,
                            SimpleNamespace(generator=None), "cpu", log=lambda line: None)
    assert vars(stopper) == vars(helpers.EarlyStopping(small_recipe.stop_patience))


def test_restore_says_where_it_resumes_from(last_checkpoint, small_recipe):
    lines = []
    model, optimizer, scheduler = fresh_objects(small_recipe)
    resume.restore_training(last_checkpoint, "original", model, optimizer, scheduler, None,
                            SimpleNamespace(generator=None), "cpu", log=lines.append)
    assert lines == [f"resumed from {last_checkpoint} after epoch 2"]


@pytest.mark.parametrize("epoch", [2, 3, 7])
def test_an_interrupted_run_names_the_last_finished_epoch(epoch, tmp_path):
    assert resume.interrupted_note(epoch, None) == (f"interrupted during epoch {epoch}: this "
                                                    f"run kept no checkpoint to resume from")
    assert resume.interrupted_note(epoch, "x-last.pt") == (
        f"interrupted during epoch {epoch}: x-last.pt holds epoch {epoch - 1}; continue with "
        f"train_run(..., resume='x-last.pt')")
