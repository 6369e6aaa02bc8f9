"""`python helpers.py bench`: training images per second of the original recipe and of the fast
path, side by side on this machine, and on a GPU the time a recipe takes to reach 93% test
accuracy."""
from __future__ import annotations

import itertools
import json
import statistics
import time

import torch

import helpers
from .engine import make_eval_loader, make_train_loader, make_training, with_precision
from .fast_path import DeviceLoader, compile_model, mixed_precision


def images_per_second(model, loader, device, precision=None) -> float:
    """Training throughput of one pass over `loader`, after a few untimed warm-up steps."""
    model, optimizer = with_precision(model, torch.optim.Adam(model.parameters(), lr=1e-3),
                                      device, precision)
    loss_fn = torch.nn.CrossEntropyLoss()
    helpers.train_one_epoch(model, itertools.islice(loader, 3), loss_fn, optimizer, device)
    start = time.perf_counter()
    helpers.train_one_epoch(model, loader, loss_fn, optimizer, device)  # ends with a sync
    return len(loader.dataset) / (time.perf_counter() - start)


def bench(images: int = 8192, rounds: int = 3, compiled: bool | None = None) -> dict:
    """Training images per second of the original recipe and of the fast path, side by side.

    (a) the original recipe: batch 16 through a DataLoader that applies ToTensor image by image;
    (b) the fast path: the uint8 data on the device (DeviceLoader), channels-last, a batch of 256
        on a CPU or 1,024 on a GPU, mixed precision chosen by the GPU's compute capability.
    The two alternate `rounds` times and the median of each is reported, so background load
    touches both alike. compiled (default: on a GPU) adds (b') the fast path with the network
    compiled (compile_model: CUDA graphs on a GPU), timed after its compilation.
    On a GPU, also (c) the wall time of the improved recipe to 93% test accuracy.
    """
    device = helpers.pick_device()
    train_set, _, test_set = helpers.load_datasets(helpers.course_settings(smoke=False))
    subset = helpers.first(train_set, images)
    precision = mixed_precision(device)
    fast_batch = 1024 if device.type == "cuda" else 256
    fast_loader = DeviceLoader(subset, fast_batch, shuffle=True, device=device)
    original, fast = [], []
    for round_ in range(rounds):
        torch.manual_seed(round_)
        model = helpers.build_model("original").to(device)
        original.append(images_per_second(model, helpers.make_loader(subset, 16, shuffle=True,
                                                                      device=device),
                                          device))
        model = helpers.build_model("original").to(device, memory_format=torch.channels_last)
        fast.append(images_per_second(model, fast_loader, device, precision))
    compiled_rate = None
    if compiled or (compiled is None and device.type == "cuda"):
        model = compile_model(helpers.build_model("original")
                              .to(device, memory_format=torch.channels_last), device)
        # the first pass pays for compiling
        images_per_second(model, fast_loader, device, precision)
        compiled_rate = statistics.median(images_per_second(model, fast_loader, device, precision)
                                          for _ in range(rounds))
    a, b = statistics.median(original), statistics.median(fast)
    report = {"machine": helpers.machine(), "device": str(device), "images_per_round": images,
              "rounds": rounds,
              "original_recipe_images_per_s": round(a), "fast_path_images_per_s": round(b),
              "fast_path_batch": fast_batch,
              "precision": str(precision).replace("torch.", "") if precision else "float32",
              "ratio": round(b / a, 2)}
    if compiled_rate:
        report.update(fast_path_compiled_images_per_s=round(compiled_rate),
                      compiled_ratio=round(compiled_rate / a, 2))
    if device.type == "cuda":  # on a CPU this would take the better part of an hour
        report["improved_to_93"] = time_to_accuracy(helpers.course_settings(smoke=False,
                                                                            recipe="improved"),
                                                    train_set, test_set, device)
    return report


def seeded_run(recipe, train_set, test_set, device) -> tuple:
    """A recipe's seeded start: train and test loaders, a fresh network, optimizer, scheduler,
    loss."""
    generator = helpers.seed_everything(recipe.seed)
    train_loader = make_train_loader(recipe, train_set, generator, device)
    test_loader = make_eval_loader(recipe, test_set, device)
    return (train_loader, test_loader, *make_training(recipe, device, len(train_loader)))


def time_to_accuracy(recipe, train_set, test_set, device, target: float = 0.93) -> dict:
    """Wall time of a recipe until its test accuracy, checked after every epoch, first reaches
    `target`.

    The clock includes the per-epoch test evaluations (you must look to know you are there) and
    starts after one untimed warm-up step, which pays for CUDA's and cuDNN's start-up.
    """
    train_loader, test_loader, model, optimizer, _, loss_fn = seeded_run(recipe, train_set,
                                                                          test_set, device)
    precision = mixed_precision(device)
    warm_up = helpers.build_model(recipe.model).to(device, memory_format=torch.channels_last)
    batch = (torch.rand(recipe.batch_size, 1, 28, 28, device=device),
             torch.randint(0, 10, (recipe.batch_size,), device=device))  # no seeded draws
    still = torch.optim.SGD(warm_up.parameters(), lr=0.0)
    helpers.train_one_epoch(*with_precision(warm_up, still, device, precision)[:1], [batch],
                            loss_fn, still, device)
    trained, stepper = with_precision(model, optimizer, device, precision)  # one scaler per run
    start = time.perf_counter()
    accuracy = 0.0
    for epoch in range(1, recipe.epochs + 1):
        helpers.train_one_epoch(trained, train_loader, loss_fn, stepper, device)
        _, accuracy = helpers.evaluate(model, test_loader, torch.nn.CrossEntropyLoss(), device)
        if accuracy >= target:
            break
    return {"target": target, "reached": accuracy >= target, "epochs": epoch,
            "test_accuracy": round(accuracy, 4),
            "seconds": round(time.perf_counter() - start, 2), "model": recipe.model,
            "recipe": recipe.name}



def print_bench(json_output: bool = False, compiled: bool | None = None) -> dict:
    """Run bench() and print its report: one JSON object, or one sentence."""
    result = bench(compiled=compiled)
    print(json.dumps(result) if json_output else
          f"original recipe {result['original_recipe_images_per_s']:,} images/s, fast path "
          f"{result['fast_path_images_per_s']:,} images/s: {result['ratio']}x "
          f"on {result['machine']}"
          + (f"; compiled fast path {result['fast_path_compiled_images_per_s']:,} images/s: "
             f"{result['compiled_ratio']}x" if "compiled_ratio" in result else ""))
    return result
