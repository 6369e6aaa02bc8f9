"""Stages 5-6: the loop, on real images: it learns, logs to TensorBoard, checkpoints, stops."""
import inspect
import itertools
import os
import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import helpers
from machinery import engine


def small_fit(small_sets, recipe, epochs, **fit_kwargs):
    """helpers.fit (notebook 6's loop) on the small real subsets with the course's optimizer and
    scheduler."""
    train_set, valid_set, _ = small_sets
    generator = helpers.seed_everything(0)
    model = helpers.build_model("original")
    optimizer = helpers.make_optimizer(model, recipe)
    lines = []
    history = helpers.fit(
        model, helpers.make_loader(train_set, recipe.batch_size, shuffle=True, generator=generator),
        helpers.make_loader(valid_set, 256), nn.CrossEntropyLoss(), optimizer,
        helpers.make_scheduler(optimizer, recipe), torch.device("cpu"), epochs=epochs,
        patience=recipe.stop_patience, log=lines.append, **fit_kwargs)
    return model, history, lines


def small_run(small_sets, recipe, tmp_path, epochs, **run_kwargs):
    """The course's runner (machinery.engine.run_epochs) on the small real subsets: resume and a
    last checkpoint on top of the same loop."""
    train_set, valid_set, _ = small_sets
    generator = helpers.seed_everything(0)
    recipe = replace(recipe, epochs=epochs)
    loader = helpers.make_loader(train_set, recipe.batch_size, shuffle=True, generator=generator)
    model, optimizer, schedule, loss_fn = engine.make_training(recipe, torch.device("cpu"),
                                                               len(loader))
    lines = []
    history = engine.run_epochs(model, loader, helpers.make_loader(valid_set, 256), recipe,
                                optimizer, schedule, loss_fn, torch.device("cpu"),
                                log=lines.append, **run_kwargs)
    return model, history, lines


class MovedTensor:
    """A batch's tensor that records the device the loop moves it to."""

    def __init__(self, tensor: torch.Tensor, moves: list) -> None:
        self.tensor, self.moves = tensor, moves

    def to(self, device):
        self.moves.append(device)
        return self.tensor


def test_the_loop_moves_images_and_labels_to_the_device_it_is_given():
    """On a GPU a batch left on the CPU fails; on this CPU-only machine the loop's .to(device)
    calls are checked instead, for train_one_epoch and evaluate."""
    moves, cpu = [], torch.device("cpu")
    images, labels = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    batches = [(MovedTensor(images, moves), MovedTensor(labels, moves))]

    class Loader(list):
        dataset = range(8)

    model = helpers.FMnistCNN()
    helpers.train_one_epoch(model, Loader(batches), nn.CrossEntropyLoss(),
                            torch.optim.SGD(model.parameters(), lr=0.1), cpu)
    helpers.evaluate(model, Loader(batches), nn.CrossEntropyLoss(), cpu)
    assert moves == [cpu] * 4  # images and labels, in each function


def test_seed_everything_seeds_python_numpy_torch_and_the_generator_it_returns():
    """Each generator the docstring names repeats its draws after the same seed, and another
    seed changes them: a student's own random.shuffle or np.random draw is seeded too."""
    def draws(seed):
        generator = helpers.seed_everything(seed)
        return (random.random(), float(np.random.rand()), torch.rand(1).item(),
                torch.rand(1, generator=generator).item())
    first, again, other = draws(3), draws(3), draws(4)
    assert first == again
    assert all(a != b for a, b in zip(first, other))


def test_fit_learns_logs_and_checkpoints(small_sets, small_recipe, tmp_path):
    run_dir = tmp_path / "runs" / "smoke"
    with SummaryWriter(run_dir) as writer:
        model, history, lines = small_fit(small_sets, small_recipe, epochs=3, writer=writer,
                                          best_path=tmp_path / "best.pt")
    assert history.epochs == 3 and len(lines) == 3
    assert history.train_loss[-1] < history.train_loss[0] < 2.5
    assert history.valid_accuracy[-1] > 0.5  # ten classes: chance is 0.1

    events = EventAccumulator(str(run_dir))
    events.Reload()
    for tag in ("loss/train", "loss/valid", "accuracy/valid", "learning_rate"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3], tag
    for tag, figures in (("loss/train", history.train_loss), ("loss/valid", history.valid_loss),
                         ("accuracy/valid", history.valid_accuracy), ("learning_rate", history.lr)):
        logged = [e.value for e in events.Scalars(tag)]
        assert logged == pytest.approx(figures, rel=1e-6), tag  # each curve its own figures

    best, best_meta = helpers.load_checkpoint(tmp_path / "best.pt")
    assert best_meta["epoch"] == history.best_epoch
    assert best_meta["metrics"]["valid_accuracy"] == max(history.valid_accuracy)
    at_best = history.best_epoch - 1
    assert best_meta["metrics"] == {"train_loss": history.train_loss[at_best],
                                    "valid_loss": history.valid_loss[at_best],
                                    "valid_accuracy": history.valid_accuracy[at_best]}
    assert best_meta["model"] == "original" and best_meta["classes"][0] == "T-shirt/top"
    _, accuracy = helpers.evaluate(best, helpers.make_loader(small_sets[1], 256),
                                   nn.CrossEntropyLoss(), torch.device("cpu"))
    assert accuracy == max(history.valid_accuracy)  # the best epoch's weights, not the last's


def test_the_runner_keeps_a_last_checkpoint_of_the_last_epoch(small_sets, small_recipe, tmp_path):
    model, history, lines = small_run(small_sets, small_recipe, tmp_path, epochs=2,
                                      last_path=tmp_path / "last.pt")
    last, meta = helpers.load_checkpoint(tmp_path / "last.pt")
    assert meta["epoch"] == 2 and meta["recipe"] == small_recipe.name and len(lines) == 2
    assert meta["settings"] == replace(small_recipe, epochs=2).as_dict()
    images = torch.rand(8, 1, 28, 28)
    model.eval()
    assert torch.equal(last(images), model(images))


@pytest.mark.parametrize("name", ["original-fast", "improved", "sprint", "accurate"])
def test_make_scheduler_refuses_a_one_cycle_recipe_instead_of_building_a_plateau(name):
    """Stage 5's make_scheduler builds ReduceLROnPlateau; the one-cycle recipes' schedule is the
    runner's, so a student who hands it one hears so instead of training on the wrong one."""
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    recipe = helpers.course_recipe(name=name)
    with pytest.raises(ValueError, match=f"recipe '{name}' uses the onecycle schedule"):
        helpers.make_scheduler(optimizer, recipe)
    schedule = engine.make_schedule(optimizer, recipe, steps_per_epoch=10)
    assert isinstance(schedule, torch.optim.lr_scheduler.OneCycleLR)


def test_scheduler_and_early_stopping_on_a_scripted_plateau(small_sets, small_recipe, tmp_path,
                                                            monkeypatch):
    # Validation improves for three epochs, then stays flat: the scheduler cuts the learning rate
    # after lr_patience (4) more epochs without progress, early stopping ends the run after 7.
    valid_losses = iter([1.0, 0.9, 0.8] + [0.85] * 20)
    valid_accuracies = iter([0.5, 0.6, 0.7, 0.75, 0.72] + [0.7] * 20)
    monkeypatch.setattr(helpers, "evaluate",
                        lambda *args: (next(valid_losses), next(valid_accuracies)))
    train_set, valid_set, test_set = small_sets
    tiny = (helpers.first(train_set, 64), valid_set, test_set)  # 10 epochs, so keep them short
    _, history, lines = small_fit(tiny, small_recipe, epochs=30, best_path=tmp_path / "best.pt")
    assert history.epochs == 10 and history.stopped_early
    assert history.lr == [1e-3] * 8 + [pytest.approx(1e-4)] * 2
    assert any("learning rate reduced: 1e-03 -> 1e-04" in line for line in lines)
    assert "early stop" in lines[-1]
    assert history.best_epoch == 4
    assert helpers.load_checkpoint(tmp_path / "best.pt")[1]["epoch"] == 4


def test_early_stopping_counts_epochs_without_improvement():
    stopper = helpers.EarlyStopping(patience=2)
    assert ([stopper.step(loss) for loss in (1.0, 1.1, 0.9, 0.95, 0.95)]
            == [False, False, False, False, True])


def test_evaluate_averages_the_loss_over_images_not_batches(small_sets, cpu):
    _, valid_set, _ = small_sets
    torch.manual_seed(0)
    model = helpers.build_model("original")
    # 256 images in batches of 100, 100, 56: a mean of batch means would weigh the last batch
    # wrongly.
    loss_fn = nn.CrossEntropyLoss()
    loss_uneven, acc_uneven = helpers.evaluate(model, helpers.make_loader(valid_set, 100),
                                               loss_fn, cpu)
    loss_whole, acc_whole = helpers.evaluate(model, helpers.make_loader(valid_set, 256),
                                             loss_fn, cpu)
    assert loss_uneven == pytest.approx(loss_whole, rel=1e-5)
    assert acc_uneven == acc_whole


@pytest.mark.parametrize("bad, message", [
    (dict(epochs=0), "epochs must be a positive"),
    (dict(batch_size=-16), "batch_size must be a positive"),
    (dict(lr=0.0), "lr must be positive"),
    (dict(schedule="cosine"), "unknown schedule 'cosine'"),
])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        helpers.course_recipe(smoke=True, **bad)


def test_a_recipe_for_an_unknown_network_fails_when_the_network_is_built():
    # helpers.build_model is the one place that checks network names
    recipe = helpers.course_recipe(smoke=True, network="vgg")
    with pytest.raises(ValueError, match="unknown network 'vgg': choose one of original, improved"):
        engine.make_training(recipe, torch.device("cpu"), steps_per_epoch=1)


def test_pick_device_rejects_unknown_devices():
    assert helpers.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        helpers.pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            helpers.pick_device("cuda")


def test_an_equal_validation_loss_is_no_improvement():
    """A tie does not reset early stopping's counter (nor, in fit, move the best checkpoint: see
    test_resume's scripted run, where epoch 4 ties epoch 3's accuracy and epoch 3 stays the
    best)."""
    stopper = helpers.EarlyStopping(patience=2)
    assert [stopper.step(loss) for loss in (0.5, 0.5, 0.5)] == [False, False, True]
    assert stopper.best_loss == 0.5


def test_the_epoch_loss_is_the_mean_per_image_when_the_last_batch_is_smaller(cpu):
    torch.manual_seed(0)
    images, labels = torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,))
    # no dropout: the same loss every call
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    # batches of 4, 4, 2
    loader = helpers.make_loader(torch.utils.data.TensorDataset(images, labels), 4)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay as they are
    epoch_loss = helpers.train_one_epoch(model, loader, nn.CrossEntropyLoss(), frozen, cpu)
    with torch.no_grad():
        per_image = nn.functional.cross_entropy(model(images), labels).item()
        mean_of_batch_means = sum(nn.functional.cross_entropy(model(x), y).item()
                                  for x, y in loader) / 3
    assert epoch_loss == pytest.approx(per_image, rel=1e-6)
    assert epoch_loss != pytest.approx(mean_of_batch_means, rel=1e-6)  # the two really differ here


def test_evaluate_records_no_autograd_graph(small_sets, cpu):
    grad_modes = []

    class Spy(nn.Module):
        def forward(self, x):
            grad_modes.append(torch.is_grad_enabled())
            return torch.zeros(len(x), 10)

    _, valid_set, _ = small_sets
    helpers.evaluate(Spy(), helpers.make_loader(valid_set, 128), nn.CrossEntropyLoss(), cpu)
    assert grad_modes and not any(grad_modes)


def test_the_runner_times_its_epochs_and_itself_by_the_clock(small_sets, small_recipe, cpu,
                                                             tmp_path, monkeypatch):
    # a clock that moves 15.1 s at every reading, from an arbitrary zero as perf_counter's is
    ticks = itertools.count(start=1000.0, step=15.1)
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    train_set, valid_set, _ = small_sets
    lines = []
    _, history, minutes = engine.train_run(replace(small_recipe, epochs=3),
                                           helpers.first(train_set, 64), valid_set, cpu,
                                           run_dir=tmp_path / "run", log=lines.append)
    # readings: the run's start, each epoch's start and end, the run's end
    assert history.seconds == pytest.approx([15.1] * 3) and minutes == pytest.approx(7 * 15.1 / 60)
    # time left after epoch 1: 2 x 15.1 s = 0.503 min, shown as 1; after epoch 2: 0.25, as 0
    assert lines[1].endswith("15.1 s  (~1 min left)") and lines[2].endswith("(~0 min left)")
    assert lines[0].endswith("; TensorBoard run run")  # the run's folder, named


def test_a_run_without_a_run_dir_trains_and_writes_no_tensorboard_run(small_sets, small_recipe,
                                                                      cpu, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a writer with no folder given would write to ./runs
    train_set, valid_set, _ = small_sets
    lines = []
    _, history, _ = engine.train_run(replace(small_recipe, epochs=2), helpers.first(train_set, 64),
                                     valid_set, cpu, run_dir=None, log=lines.append)
    assert history.epochs == 2 and len(history.valid_accuracy) == 2
    assert lines[0].endswith("up to 2 epochs; no TensorBoard run")
    assert list(tmp_path.rglob("*")) == []  # no events file, no folder


# ---- What mutmut's survivors of machinery/basics.py showed untested -----------------------------

@pytest.mark.parametrize("value, smoke", [("", False), ("0", False), ("false", False),
                                          (" FALSE ", False), ("no", False), ("No", False),
                                          ("1", True), ("yes", True), ("true", True)])
def test_smoke_mode_reads_the_switch_as_a_person_writes_it(value, smoke, monkeypatch):
    monkeypatch.setenv("FMNIST_SMOKE", value)
    assert helpers.smoke_mode() is smoke


def test_the_machine_line_names_this_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               "CPU")  # an ARM machine's cpuinfo names no model
    threads = torch.get_num_threads()
    try:
        for count, said in ((1, "1 thread"), (2, "2 threads")):
            torch.set_num_threads(count)
            assert helpers.machine() == (f"CPU only ({cpu}, {os.cpu_count()} CPUs, torch using "
                                         f"{said}) with torch {torch.__version__}")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cpuinfo, named", [
    (None, "CPU"),                                                 # no /proc/cpuinfo
    ("cpu : ARM\n", "CPU"),                                        # no model name in it
    ("processor\t: 0\nmodel name\t: A: B CPU\n", "A: B CPU")])   # split at the first ':' only
def test_the_machine_line_reads_the_cpu_model_or_says_cpu(cpuinfo, named, tmp_path, monkeypatch):
    from machinery import basics
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        fake.write_text(cpuinfo)
    monkeypatch.setattr(basics, "Path", lambda _: fake)
    assert helpers.machine().startswith(f"CPU only ({named}, {os.cpu_count()} CPUs, torch using ")


def test_pick_device_on_a_machine_with_a_gpu_and_with_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert helpers.pick_device("auto") == torch.device("cuda")
    assert helpers.pick_device("cuda:1") == torch.device("cuda:1")
    assert helpers.pick_device("mps") == torch.device("mps")


def test_pick_device_says_what_is_missing_and_what_to_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert helpers.pick_device("auto") == torch.device("cpu")
    for name, message in (
            ("cuda", "device 'cuda' asked for, but this machine has no CUDA GPU: use cpu or auto"),
            ("cuda:0",
             "device 'cuda:0' asked for, but this machine has no CUDA GPU: use cpu or auto"),
            ("mps", "device 'mps' asked for, but MPS is not available here: use cpu or auto"),
            ("meta", "unsupported device 'meta': use auto, cpu, cuda, cuda:N or mps")):
        with pytest.raises(ValueError) as error:
            helpers.pick_device(name)
        assert str(error.value) == message


def test_pick_device_refuses_a_gpu_number_the_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert helpers.pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError) as error:
        helpers.pick_device("cuda:2")
    assert str(error.value) == ("device 'cuda:2' asked for, but this machine has only cuda:0, "
                                "cuda:1: use one of them or auto")


def test_a_checkpoint_outside_the_course_folders_is_named_by_its_whole_path(tmp_path):
    path = tmp_path / "somewhere" / "mine.pt"
    assert helpers.describe_checkpoint(path) == str(path)


def scripted_fit(valid_accuracies, epochs, tmp_path, monkeypatch, clock=None):
    """helpers.fit's bookkeeping alone: training and validation replaced by scripted figures (the
    validation loss falls every epoch, so nothing stops early), each call's device recorded."""
    devices = []
    losses = iter([1.0 - epoch / 100 for epoch in range(epochs)])
    accuracies = iter(valid_accuracies)

    def train_one_epoch(model, loader, loss_fn, optimizer, device):
        devices.append(("train", device))
        return 0.5

    def evaluate(model, loader, loss_fn, device):
        devices.append(("evaluate", device))
        return next(losses), next(accuracies)

    monkeypatch.setattr(helpers, "train_one_epoch", train_one_epoch)
    monkeypatch.setattr(helpers, "evaluate", evaluate)
    if clock is not None:
        monkeypatch.setattr(helpers, "time", SimpleNamespace(perf_counter=clock))
    saved = []
    monkeypatch.setattr(helpers, "save_checkpoint",
                        lambda path, model, epoch, metrics: saved.append(epoch))
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    lines = []
    history = helpers.fit(model, [], [], nn.CrossEntropyLoss(), optimizer, scheduler,
                          torch.device("cpu"), epochs=epochs, best_path=tmp_path / "best.pt",
                          log=lines.append)
    return history, saved, devices, lines


def test_fit_stops_after_seven_epochs_without_a_better_loss_by_default(monkeypatch):
    """Stage 6's rule as the course teaches it: `fit` called without `patience` stops once the
    validation loss has gone 7 epochs without improving."""
    monkeypatch.setattr(helpers, "train_one_epoch", lambda *args: 0.5)
    monkeypatch.setattr(helpers, "evaluate", lambda *args: (1.0, 0.5))  # never better than epoch 1
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    history = helpers.fit(model, [], [], nn.CrossEntropyLoss(), optimizer, scheduler,
                          torch.device("cpu"), epochs=20, log=lambda line: None)
    assert (history.epochs, history.stopped_early) == (8, True)


def test_fit_keeps_the_earlier_epoch_of_a_tie_even_when_it_is_the_first(tmp_path, monkeypatch):
    history, saved, _, _ = scripted_fit([0.7, 0.7, 0.6, 0.8], 4, tmp_path, monkeypatch)
    assert history.best_epoch == 4 and saved == [1, 4]  # epoch 2 only ties epoch 1
    history, saved, _, _ = scripted_fit([0.7, 0.7, 0.6], 3, tmp_path, monkeypatch)
    assert history.best_epoch == 1 and saved == [1]


def test_fit_trains_and_validates_on_the_device_it_is_given(tmp_path, monkeypatch):
    _, _, devices, _ = scripted_fit([0.5, 0.6], 2, tmp_path, monkeypatch)
    assert devices == [("train", torch.device("cpu")), ("evaluate", torch.device("cpu"))] * 2


def test_fit_times_each_epoch_and_estimates_the_minutes_left(tmp_path, monkeypatch):
    clock = itertools.count(start=50_000.0, step=300.0)  # every epoch takes exactly 300 s
    history, _, _, lines = scripted_fit([0.5] * 10, 10, tmp_path, monkeypatch,
                                        clock=lambda: next(clock))
    assert history.seconds == [300.0] * 10
    assert "300.0 s  (~45 min left)" in lines[0]  # 9 epochs of 300 s
    assert "(~5 min left)" in lines[-2] and "(~0 min left)" in lines[-1]


def test_early_stopping_counts_a_diverged_run_from_its_first_epoch():
    # A NaN loss is never an improvement: a run that diverges at once stops after `patience`.
    stopper = helpers.EarlyStopping(patience=2)
    assert [stopper.step(float("nan")) for _ in range(2)] == [False, True]


def test_fit_and_early_stopping_default_to_the_original_patience():
    patience = helpers.course_recipe().stop_patience  # the original notebook's 7
    assert helpers.EarlyStopping().patience == patience
    assert inspect.signature(helpers.fit).parameters["patience"].default == patience


def test_pick_device_takes_plain_cuda_on_a_machine_with_one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # Colab's T4
    assert helpers.pick_device("cuda") == torch.device("cuda")
    assert helpers.pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="has only cuda:0: use one of them or auto"):
        helpers.pick_device("cuda:1")
