"""Stage 10's fast path: the data on the device gives the same batches as the DataLoader path,
augmentation shifts and mirrors each image, and the runner trains with it through helpers'
own train_one_epoch, in mixed precision where the hardware has it."""
import itertools
import math
import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import helpers
from machinery import bench, engine, fast_path
from machinery.fast_path import DeviceLoader


def test_device_tensors_are_the_images_totensor_gives(small_sets):
    train, _, _ = small_sets
    images, labels = fast_path.dataset_tensors(train)  # a Subset of a Subset of FashionMNIST
    assert images.dtype == torch.uint8 and images.shape == (len(train), 28, 28)
    for i in (0, 7, len(train) - 1):
        image, label = train[i]
        assert torch.equal(images[i].float().div(255), image[0]) and labels[i] == label


def test_the_fast_path_refuses_another_dataset_by_name():
    images = torch.zeros(4, 1, 28, 28)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"needs a FashionMNIST dataset .*got TensorDataset$"):
        DeviceLoader(dataset, 2)


def test_device_loader_batches_match_the_dataloader(small_sets):
    _, valid, _ = small_sets
    fast = DeviceLoader(valid, 100)
    slow = helpers.make_loader(valid, 100)
    assert len(fast) == len(slow) == 3
    for (x_fast, y_fast), (x_slow, y_slow) in zip(fast, slow):
        assert torch.equal(x_fast, x_slow) and torch.equal(y_fast, y_slow)


def test_shuffling_is_seeded_and_covers_every_image_once(small_sets):
    train, _, _ = small_sets
    def labels_in_order(seed):
        loader = DeviceLoader(train, 64, shuffle=True,
                              generator=torch.Generator().manual_seed(seed))
        return torch.cat([y for _, y in loader])
    first, again, other = labels_in_order(0), labels_in_order(0), labels_in_order(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first.sort().values, fast_path.dataset_tensors(train)[1].sort().values)


def test_shift_and_flip_move_each_image_as_asked():
    image = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28)
    images = image.repeat(3, 1, 1, 1)
    out = fast_path.shift_and_flip(images, torch.tensor([[2, 2], [2, 2], [0, 4]]),
                                   torch.tensor([False, True, False]))
    assert torch.equal(out[0], image[0])                       # centre crop: unchanged
    assert torch.equal(out[1], image[0].flip(-1))              # mirrored
    assert torch.equal(out[2, 0, 2:, :26], image[0, 0, :26, 2:])  # moved down 2 and left 2 ...
    # ... zeros come in
    assert out[2, 0, :2].abs().sum() == 0 and out[2, 0, :, 26:].abs().sum() == 0


class DevicesMixed(TorchFunctionMode):
    """Records each torch call whose tensors lie on more than one device: on a GPU, each is a
    copy between host and device (or an error)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, set[str]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        if len(devices) > 1:
            self.calls.append((getattr(func, "__name__", str(func)), devices))
        return func(*args, **kwargs)


@pytest.mark.parametrize("erase", [0.0, 0.5], ids=["shift-flip", "and-erase"])
def test_an_epoch_on_the_device_cuts_and_augments_there_with_no_copy_per_batch(
        small_sets, erase, monkeypatch):
    """The loader on the meta device (shapes, no data) stands in for a GPU: every index, shift,
    flip and erased box of an epoch is computed where the images are."""
    train, _, _ = small_sets
    loader = DeviceLoader(train, 100, shuffle=True, generator=torch.Generator().manual_seed(0),
                          device="meta", augment=True, erase=erase)
    # the meta device has no random generator: the noise's comes from a CPU one (meta draws
    # shapes only)
    cpu_generator, generators_asked = torch.Generator, []

    def generator(device=None):
        generators_asked.append(device)
        return cpu_generator()
    monkeypatch.setattr(torch, "Generator", generator)
    with DevicesMixed() as mixed:
        batches = [(images.device.type, labels.device.type, len(labels))
                   for images, labels in loader]
    assert batches == [("meta", "meta", min(100, len(train) - start))
                       for start in range(0, len(train), 100)]
    assert mixed.calls == []
    assert generators_asked == ([torch.device("meta")] if erase else [])


def test_an_epoch_shifts_images_both_ways_by_up_to_the_recipes_pixels(small_sets, monkeypatch):
    train, _, _ = small_sets
    drawn = []
    real = fast_path.shift_and_flip
    monkeypatch.setattr(fast_path, "shift_and_flip",
                        lambda images, shifts, flips, pad: drawn.append((shifts, pad))
                        or real(images, shifts, flips, pad))
    # asked for 1 pixel; asked for nothing: a recipe's default
    for shift, asked in ((1, {"shift": 1}), (helpers.Recipe("x").shift, {})):
        drawn.clear()
        loader = DeviceLoader(train, 128, shuffle=True, generator=torch.Generator().manual_seed(0),
                              augment=True, **asked)
        assert sum(len(x) for x, _ in loader) == len(train)
        shifts = torch.cat([s for s, _ in drawn])  # crop offsets: pad + the move, 0..2*pad
        assert {pad for _, pad in drawn} == {shift}
        for axis in (0, 1):  # up and down, left and right, and every step between
            assert set(shifts[:, axis].tolist()) == set(range(2 * shift + 1)), (shift, axis)
        first, second = drawn[0][0], drawn[1][0]  # each batch its own images' shifts
        assert not torch.equal(first[:len(second)], second)


def test_augmented_batches_differ_but_keep_their_labels(small_sets):
    train, _, _ = small_sets
    plain = DeviceLoader(train, 512, shuffle=True, generator=torch.Generator().manual_seed(0))
    augmented = DeviceLoader(train, 512, shuffle=True, generator=torch.Generator().manual_seed(0),
                             augment=True)
    (x_plain, y_plain), (x_aug, y_aug) = next(iter(plain)), next(iter(augmented))
    assert torch.equal(y_plain, y_aug) and not torch.equal(x_plain, x_aug)
    assert 0 <= x_aug.min() and x_aug.max() <= 1
    # pixels are only moved (some cut off at the border), never made up
    per_image_aug, per_image_plain = x_aug.sum(dim=(1, 2, 3)), x_plain.sum(dim=(1, 2, 3))
    assert (per_image_aug <= per_image_plain + 1e-3).all()
    assert per_image_aug.sum() > 0.9 * per_image_plain.sum()


def test_the_runner_trains_on_the_fast_path(small_sets, small_recipe, cpu, tmp_path):
    train, valid, _ = small_sets
    recipe = replace(small_recipe, epochs=3, fast=True)
    generator = helpers.seed_everything(0)
    loader = DeviceLoader(train, 32, shuffle=True, generator=generator)
    model, optimizer, schedule, loss_fn = engine.make_training(recipe, cpu, len(loader))
    history = engine.run_epochs(model, loader, DeviceLoader(valid, 256), recipe, optimizer,
                                schedule, loss_fn, cpu, last_path=tmp_path / "last.pt",
                                log=lambda _: None)
    assert history.epochs == 3 and history.train_loss[-1] < history.train_loss[0]
    assert (helpers.read_checkpoint(tmp_path / "last.pt")["training_state"]["rng"]["loader"]
            is not None)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_a_run_builds_its_network_on_the_device_channels_last_on_the_fast_path(small_recipe,
                                                                              fast):
    """The meta device stands in for a GPU: a network left on the CPU meets its batches there."""
    model, _, _, _ = engine.make_training(replace(small_recipe, fast=fast), torch.device("meta"),
                                          steps_per_epoch=1)
    weights = [p for p in model.parameters() if p.dim() == 4]  # the convolutions'
    assert weights and all(p.device.type == "meta" for p in model.parameters())
    layout = torch.channels_last if fast else torch.contiguous_format
    assert all(p.is_contiguous(memory_format=layout) for p in weights)
    # a weight of one input channel is both layouts at once; the others tell them apart
    assert any(not p.is_contiguous() for p in weights) == fast


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no-amx"])
def test_mixed_precision_is_chosen_by_the_hardware(amx, monkeypatch):
    monkeypatch.setattr(fast_path, "has_amx", lambda: amx)
    assert fast_path.mixed_precision(torch.device("cpu")) is None
    # bf16 on a CPU only where asked and where AMX units do the arithmetic
    assert fast_path.mixed_precision(torch.device("cpu"), cpu_bf16=True) == (
        torch.bfloat16 if amx else None)


@pytest.mark.parametrize("capability, precision", [
    ((7, 5), torch.float16),   # a T4: its tensor cores do fp16 (bf16 only emulated)
    ((8, 0), torch.bfloat16),  # an A100
    ((8, 6), torch.bfloat16),
    ((9, 0), torch.bfloat16),  # an H100
])
def test_a_gpu_gets_bf16_from_ampere_on_and_fp16_before(capability, precision, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert fast_path.mixed_precision(torch.device("cuda")) == precision
    assert fast_path.mixed_precision(torch.device("cuda"), cpu_bf16=True) == precision


def test_a_machine_with_two_gpus_gets_the_precision_of_the_one_asked_for(monkeypatch):
    second = torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: (7, 5) if device == second else (9, 0))
    assert fast_path.mixed_precision(second) == torch.float16  # a T4 beside an H100


@pytest.mark.parametrize("torch_says, amx", [(True, True), (False, False), (None, False)],
                         ids=["amx", "no-amx", "torch-cannot-tell"])
def test_has_amx_asks_torch_and_says_no_where_torch_cannot_tell(torch_says, amx, monkeypatch):
    if torch_says is None:  # an older torch without the private probe
        monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    else:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: torch_says,
                            raising=False)
    assert fast_path.has_amx() is amx


@pytest.mark.parametrize("device, mode", [("cpu", None), ("cuda", "reduce-overhead")])
def test_compiling_makes_one_graph_per_shape_and_uses_cuda_graphs_on_a_gpu(device, mode):
    model, asked = nn.Linear(2, 2), []
    # nn.Module.compile's own defaults: what a dropped argument would leave
    model.compile = lambda mode=None, dynamic=None, **rest: asked.append((mode, dynamic, rest))
    assert fast_path.compile_model(model, torch.device(device)) is model
    assert asked == [(mode, False, {})]


def test_images_per_second_counts_images_not_batches(small_sets, cpu, monkeypatch):
    clock = iter([10.0, 12.0])  # the timed pass: 2 seconds
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    loader = helpers.make_loader(helpers.first(small_sets[0], 64), 16)  # 4 batches of 16
    assert bench.images_per_second(helpers.build_model("original"), loader, cpu) == 64 / 2


def test_bench_reports_both_paths_side_by_side(data_root, monkeypatch):
    timed = []
    real = bench.images_per_second
    monkeypatch.setattr(bench, "images_per_second", lambda model, loader, device, precision=None:
                        timed.append(loader) or real(model, loader, device, precision))
    report = bench.bench(images=256, rounds=1)
    original, fast = timed  # the original recipe as notebook 6 trains it, then the fast path
    assert type(original) is torch.utils.data.DataLoader and original.batch_size == 16
    assert type(fast) is DeviceLoader and fast.batch_size == report["fast_path_batch"] == 256
    assert len(original.dataset) == len(fast.dataset) == 256
    assert report["original_recipe_images_per_s"] > 0 and report["fast_path_images_per_s"] > 0
    # the ratio of the unrounded rates: within the rounding of the printed whole numbers
    assert report["ratio"] == pytest.approx(
        report["fast_path_images_per_s"] / report["original_recipe_images_per_s"], rel=0.05)
    assert report["device"] == str(helpers.pick_device()) and report["machine"] == helpers.machine()


def test_a_fast_run_uses_device_loaders_and_says_so(small_sets, small_recipe, cpu):
    fast = helpers.course_recipe(smoke=True, name="original-fast")
    train, valid, _ = small_sets
    loaders = (engine.make_train_loader(fast, train, torch.Generator(), cpu),
               engine.make_eval_loader(fast, valid, cpu))
    assert all(isinstance(loader, DeviceLoader) for loader in loaders)
    assert loaders[0].shuffle and not loaders[1].shuffle
    assert (helpers.run_name(fast).startswith("original-fast-b128-")
            and "-smoke-" in helpers.run_name(fast))
    slow = (engine.make_train_loader(small_recipe, train, torch.Generator(), cpu),
            engine.make_eval_loader(small_recipe, valid, cpu))
    assert all(isinstance(loader, torch.utils.data.DataLoader) for loader in slow)


def test_time_to_accuracy_stops_at_the_first_epoch_that_reaches_the_target(small_sets, cpu):
    settings = helpers.course_recipe(smoke=True, name="improved", epochs=3, batch_size=64,
                                       train_size=512, valid_size=256, test_size=256)
    reached = bench.time_to_accuracy(settings, small_sets[0], small_sets[2], cpu, target=0.05)
    assert reached["reached"] and reached["epochs"] == 1 and reached["seconds"] > 0
    missed = bench.time_to_accuracy(settings, small_sets[0], small_sets[2], cpu, target=1.01)
    assert not missed["reached"] and missed["epochs"] == 3 and 0 <= missed["test_accuracy"] <= 1


def test_time_to_accuracy_steps_through_the_gradient_scaler_in_fp16(small_sets, cpu,
                                                                      monkeypatch):
    monkeypatch.setattr(bench, "mixed_precision", lambda device: torch.float16)  # a T4's choice
    stepped, real = [], helpers.train_one_epoch
    monkeypatch.setattr(helpers, "train_one_epoch", lambda model, loader, loss_fn, optimizer,
                        device: stepped.append(optimizer) or real(model, itertools.islice(
                            loader, 2), loss_fn, optimizer, device))
    settings = helpers.course_recipe(smoke=True, name="original-fast", epochs=1, batch_size=16)
    test_set = helpers.first(small_sets[2], 64)
    bench.time_to_accuracy(settings, small_sets[0], test_set, cpu, target=1.01)
    _, timed = stepped  # the untimed warm-up step, then the epoch
    assert isinstance(timed, engine.ScaledOptimizer) and timed.scaler.is_enabled()


class SmallConvNet(nn.Module):
    """A network that compiles in seconds, not half a minute: one convolution, BatchNorm (so eval
    mode differs from training), a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def test_a_compiled_run_logs_its_summary_and_saves_checkpoints_an_uncompiled_one_loads(
        small_sets, cpu, tmp_path, monkeypatch):
    """`train --compile` end to end: the runner compiles, trains, saves, and writes TensorBoard's
    summary, whose features come from a hook a compiled graph would leave out."""
    train, valid, _ = small_sets
    monkeypatch.setitem(helpers.NETWORKS, "small-conv", SmallConvNet)
    settings = helpers.course_recipe(smoke=True, name="original-fast", network="small-conv",
                                       compile=True, epochs=1, batch_size=128)  # 4 full batches
    model, history, _ = engine.train_run(settings, train, valid, cpu, run_dir=tmp_path / "run",
                                         best_path=tmp_path / "compiled.pt", log=lambda line: None)
    assert model._compiled_call_impl is not None  # compiled, not quietly eager
    assert 0 < history.train_loss[0] < 5
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert [image.step for image in events.Images("valid/confusion_matrix")] == [1]
    features = (tmp_path / "run" / "00001" / "penultimate_layer" / "tensors.tsv").read_text()
    assert len(features.splitlines()) == len(valid)  # the last layer's input, one row an image
    # same keys: no '_orig_mod.' prefix
    eager, _ = helpers.load_checkpoint(tmp_path / "compiled.pt")
    images, _ = next(iter(DeviceLoader(valid, 256)))
    model.eval()
    eager.eval()
    with torch.no_grad():
        assert torch.allclose(model(images), eager(images), atol=1e-4)


def test_fp16_with_a_gradient_scaler_trains_without_a_schedule_warning(small_sets, cpu,
                                                                       loud_network):
    # the T4's path (mixed_precision gives fp16 below compute capability 8); CPU autocast runs fp16
    # too. The first scaled gradients overflow (as the improved network's do), so the scaler skips
    # those updates, and the one-cycle schedule, stepped by the optimizer's own step, waits too:
    # no "lr_scheduler.step() before optimizer.step()" warning for a student to puzzle over.
    train, _, _ = small_sets
    recipe = helpers.course_recipe(smoke=True, name="improved", batch_size=32,
                                     network=loud_network)
    torch.manual_seed(0)
    model = helpers.build_model(loud_network)
    before = [p.detach().clone() for p in model.parameters()]
    loader = DeviceLoader(helpers.first(train, 128), 32, shuffle=True,
                          generator=torch.Generator().manual_seed(0))
    optimizer = helpers.make_optimizer(model, recipe)
    schedule = engine.make_schedule(optimizer, recipe, len(loader))
    trained, stepper = engine.with_precision(model, optimizer, cpu, torch.float16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = helpers.train_one_epoch(trained, loader, nn.CrossEntropyLoss(), stepper, cpu)
    assert 0 < loss < math.inf  # the overflowing steps were skipped: no inf or NaN got in
    assert stepper.scaler.get_scale() < 2.0 ** 16  # updates were skipped: the scale came down
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # later ones ran
    taken = sum(state["step"] for state in optimizer.state.values()) / len(optimizer.state)
    assert 0 < schedule.last_epoch == taken < len(loader)  # one schedule step per real update
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]


def test_the_gradient_scaler_changes_no_update_where_nothing_overflows(small_sets, cpu):
    """Scaling by a power of two and unscaling again is exact in fp32: the scaled steps must move
    the weights exactly as plain steps do, so the scaler's wiring cannot hide a wrong gradient."""
    train, _, _ = small_sets
    loader = DeviceLoader(helpers.first(train, 96), 32)
    weights = []
    for scaled in (False, True):
        torch.manual_seed(0)
        model = helpers.build_model("original")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, enabled=scaled)
        # scaled: the wrapper in fp32 (no autocast) with the scaler; plain: the bare network
        trained = engine.MixedPrecision(model, None, scaler) if scaled else model
        stepper = engine.ScaledOptimizer(optimizer, scaler) if scaled else optimizer
        helpers.train_one_epoch(trained, loader, nn.CrossEntropyLoss(), stepper, cpu)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_a_network_wrapped_for_fp16_still_evaluates_without_gradients(small_sets, cpu):
    # the scaler's hook goes on logits that will get a gradient only: evaluation has none
    model = helpers.build_model("original")
    wrapped = engine.MixedPrecision(model, torch.float16, torch.amp.GradScaler("cpu"))
    images = torch.stack([small_sets[1][i][0] for i in range(2)])
    with torch.no_grad():
        assert wrapped.eval()(images).dtype == torch.float32


def test_one_cycle_steps_once_per_optimizer_step_and_ends_at_its_length(cpu):
    recipe = helpers.course_recipe(smoke=True, name="original-fast", epochs=2)
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr=recipe.lr)
    schedule = engine.make_schedule(optimizer, recipe, steps_per_epoch=5)
    rates = []
    for _ in range(10):
        rates.append(helpers.current_lr(optimizer))
        optimizer.step()
    assert schedule.last_epoch == 10 and max(rates) == pytest.approx(recipe.lr, rel=0.05)
    assert rates[0] < recipe.lr / 10 and rates[-1] < rates[0] / 100  # warm up, then anneal


def test_a_short_run_reports_a_few_epochs_at_a_forced_precision(small_sets, cpu):
    from machinery.tools import measure
    settings = helpers.course_recipe(smoke=True, name="improved", batch_size=128,
                                       train_size=512, valid_size=256, test_size=256)
    result = measure.short_run(settings, None, small_sets[0], small_sets[2], cpu, epochs=1)
    assert result["label"] == "improved, 1 of 2 epochs, None"
    assert (0 < result["train_loss"] < 5 and 0 <= result["test_accuracy"] <= 1
            and result["seconds"] > 0)


def test_evaluation_never_augments_on_either_path(small_sets, cpu):
    """The improved recipe augments its training batches; its validation and test batches must be
    the images themselves, the same every time."""
    _, valid, _ = small_sets
    plain = torch.cat([x for x, _ in helpers.make_loader(valid, 1000)])
    for recipe in ("improved", "original"):
        loader = engine.make_eval_loader(helpers.course_recipe(smoke=True, name=recipe),
                                         valid, cpu)
        first_pass, second_pass = (torch.cat([x for x, _ in loader]) for _ in range(2))
        assert torch.equal(first_pass, second_pass) and torch.equal(first_pass, plain), recipe
