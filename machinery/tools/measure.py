"""Measurements beyond `bench`, for an instructor with a GPU (`gpu-runs`) or checking memory
(`loadcheck`)."""
from __future__ import annotations

import resource
import time
from dataclasses import replace
from pathlib import Path

import torch

import helpers
from ..bench import seeded_run, time_to_accuracy
from ..engine import with_precision


def load_check(calls: int = 5000, evaluations: int = 5) -> dict:
    """Evaluate the full test set and predict single images thousands of times; report memory."""

    def resident_mb() -> float:
        status = dict(line.split(":", 1)
                      for line in Path("/proc/self/status").read_text().splitlines())
        return int(status["VmRSS"].split()[0]) / 1024

    device = torch.device("cpu")
    model, _ = helpers.load_checkpoint(helpers.course_checkpoint("original"), device)
    _, _, test_set = helpers.load_datasets(helpers.course_recipe(smoke=False))
    loader = helpers.make_loader(test_set, 1000)
    loss_fn = torch.nn.CrossEntropyLoss()
    report = {"evaluations_mb": [], "predict_mb": []}
    for _ in range(evaluations):
        helpers.evaluate(model, loader, loss_fn, device)
        report["evaluations_mb"].append(round(resident_mb(), 1))
    for i in range(calls):
        helpers.predict(model, test_set[i % len(test_set)][0])
        if (i + 1) % 1000 == 0:
            report["predict_mb"].append(round(resident_mb(), 1))
    report["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report["growth_mb"] = round(report["predict_mb"][-1] - report["evaluations_mb"][0], 1)
    return report


def short_run(recipe, precision, train_set, test_set, device, epochs: int = 2) -> dict:
    """A few epochs of a recipe at a forced precision: last training loss, test accuracy,
    seconds."""
    train_loader, test_loader, model, optimizer, _, loss_fn = seeded_run(recipe, train_set,
                                                                         test_set, device)
    trained, stepper = with_precision(model, optimizer, device, precision)  # one scaler per run
    start = time.perf_counter()
    for _ in range(epochs):
        loss = helpers.train_one_epoch(trained, train_loader, loss_fn, stepper, device)
    seconds = time.perf_counter() - start
    accuracy = helpers.evaluate(model, test_loader, torch.nn.CrossEntropyLoss(), device)[1]
    return {"label": f"{recipe.network}, {epochs} of {recipe.epochs} epochs, {precision}",
            "train_loss": round(loss, 4), "test_accuracy": round(accuracy, 4),
            "seconds": round(seconds, 2)}


def gpu_runs():
    """GPU measurements beyond bench, one JSON line each as they finish.

    First the improved recipe for two epochs in fp16 with a gradient scaler (what a T4 runs), bf16
    and fp32, to show the fp16 path trains as well. Then the improved network's wall time to 93%
    test accuracy (time_to_accuracy) on shorter one-cycle schedules, eager and compiled; the first
    compiled run pays for compiling, the later ones find the compiled kernels cached.
    """
    device = helpers.pick_device()
    train_set, _, test_set = helpers.load_datasets(helpers.course_recipe(smoke=False))
    improved = helpers.course_recipe(smoke=False, name="improved")
    for precision in (torch.float16, torch.bfloat16, None):
        yield short_run(improved, precision, train_set, test_set, device)
    for label, recipe in [("improved, 12-epoch one-cycle", replace(improved, epochs=12)),
                          ("improved, compiled (cold)", replace(improved, compile=True)),
                          ("improved, 12-epoch one-cycle, compiled (warm cache)",
                           replace(improved, epochs=12, compile=True)),
                          ("improved, 8-epoch one-cycle, compiled (warm cache)",
                           replace(improved, epochs=8, compile=True))]:
        start = time.perf_counter()
        result = time_to_accuracy(recipe, train_set, test_set, device)
        yield dict(label=label, **result, call_seconds=round(time.perf_counter() - start, 1))

