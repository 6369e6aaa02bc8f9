"""`study`: choosing the accuracy recipe (at most 300K parameters, 95% as the target), and `ladder`:
notebook 10's ladder of recipes, one change a rung, each rung with three seeds.

Candidate recipes, each trained with seeds 0, 1, 2 in parallel worker processes, are compared
on the validation split only. The candidate with the best mean validation accuracy is chosen by
that rule, written here before any run; the test set is then read once, for the chosen candidate
alone, and only if its mean validation accuracy reaches the target: a candidate that misses on
validation leaves the test set unread for the next study.

The ladder (machinery.recipes.LADDER) chooses nothing: its rungs are fixed in the file. Each rung's
seeds are recorded on validation, epoch by epoch, and the finished network's test accuracy is read
once, after its last epoch, to be reported; one JSON line per run, and a second call runs only what
the file does not hold yet.
"""
from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

import helpers
from .. import engine
from ..bench import seeded_run
from ..recipes import RECIPES, Recipe, ladder_recipes, smoke_sized
from ..runs import evaluate_checkpoints

TARGET = 0.95
SEEDS = (0, 1, 2)
# One change at a time: "long" is the improved recipe trained 2.5 times as long, evaluated with
# its mirror images (flip TTA); "long-erase" adds random erasing to it, and nothing else.
LONG = replace(RECIPES["improved"], name="long", epochs=60, flip_tta=True)
CANDIDATES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    LONG,
    replace(LONG, name="long-erase", erase=0.5),
)}


class PastDeadline(Exception):
    """A run that would end after the study's deadline, stopped early."""


def would_overrun(epoch_ends: list[float], epochs: int, deadline: float) -> bool:
    """Whether a run whose epochs ended at these times would end after `deadline`, at the pace of
    its epochs since the first (which pays for warming up); never judged before three epochs."""
    if len(epoch_ends) < 3:
        return False
    per_epoch = (epoch_ends[-1] - epoch_ends[0]) / (len(epoch_ends) - 1)
    return epoch_ends[-1] + per_epoch * (epochs - len(epoch_ends)) > deadline


def run_one(candidate: Recipe, seed: int, out: Path | None, deadline: float | None = None,
            smoke: bool = False, test: bool = False) -> dict:
    """Train one candidate with one seed and return its validation figures, and with `test` the
    finished network's test accuracy (read after the last epoch); with `out`, save its network
    to OUT/NAME-sSEED.pt. deadline (time.time()): stop the run when its epochs so far say it
    cannot end before it."""
    if torch.cuda.is_available():  # the GPU trains; the workers share the CPU for the rest
        torch.set_num_threads(1)
    name = candidate.name
    recipe = replace(smoke_sized(candidate, smoke), seed=seed)
    device = helpers.pick_device()
    start = time.time()
    train_set, valid_set, test_set = engine.recipe_datasets(recipe, helpers.DATA_ROOT)
    train_loader, valid_loader, model, optimizer, schedule, loss_fn = seeded_run(
        recipe, train_set, valid_set, device)
    epochs_done = []

    def watch(line: str) -> None:  # run_epochs' log: one line per epoch
        epochs_done.append(time.time())
        if deadline and would_overrun(epochs_done, recipe.epochs, deadline):
            raise PastDeadline(f"{name} seed {seed}: stopped after {len(epochs_done)} epochs, "
                               f"it would have ended past the deadline")

    record = {"candidate": name, "seed": seed, "machine": helpers.machine(), "device": str(device)}
    try:
        history = engine.run_epochs(model, train_loader, valid_loader, recipe, optimizer,
                                    schedule, loss_fn, device, log=watch)
    except PastDeadline as e:
        return {**record, "stopped": str(e), "seconds": round(time.time() - start, 1)}
    best = max(range(history.epochs), key=history.valid_accuracy.__getitem__)  # the first best
    record.update(epochs=history.epochs, valid_accuracy=round(history.valid_accuracy[-1], 4),
                  best_epoch=best + 1, best_valid_accuracy=round(history.valid_accuracy[best], 4),
                  valid_accuracy_by_epoch=[round(a, 4) for a in history.valid_accuracy],
                  seconds=round(time.time() - start, 1))
    if test:  # reported, never used to choose
        test_loader = engine.make_eval_loader(recipe, test_set, device)
        _, accuracy = helpers.evaluate(engine.evaluated(model, recipe, device), test_loader,
                                       loss_fn, device)
        record["test_accuracy"] = round(accuracy, 4)
    if out is not None:
        path = engine.save(out / f"{name}-s{seed}.pt", model, recipe, history.epochs,
                           {"valid_accuracy": history.valid_accuracy[-1]})
        record["checkpoint"] = path.name
    return record


def choose(records: list[dict]) -> str | None:
    """The candidate with the best mean validation accuracy over all its seeds (None when no
    candidate finished every seed)."""
    finished = {name: [r["valid_accuracy"] for r in records
                       if r["candidate"] == name and "valid_accuracy" in r]
                for name in CANDIDATES}
    complete = {name: statistics.mean(v) for name, v in finished.items() if len(v) == len(SEEDS)}
    return max(complete, key=complete.get) if complete else None


def read_test(name: str, out: Path) -> list[float]:
    """The chosen candidate's test accuracy, seed by seed, as `python helpers.py evaluate` gives
    it (with the flip TTA its recipe records)."""
    paths = [out / f"{name}-s{seed}.pt" for seed in SEEDS]
    return [round(figures["test_accuracy"], 4)
            for figures in evaluate_checkpoints(paths, helpers.pick_device(), helpers.DATA_ROOT)]


def study(out: Path, workers: int = 1, minutes: float | None = None,
          smoke: bool = False) -> dict:
    """Every candidate with every seed (`workers` processes at a time, within `minutes`), the
    choice on validation, then the chosen candidate's test accuracy if validation reached
    TARGET."""
    out.mkdir(parents=True, exist_ok=True)
    helpers.prepare_data(helpers.DATA_ROOT)  # once, before the workers read it
    deadline = time.time() + 60 * minutes if minutes else None
    (out / "runs.jsonl").write_text("")  # this study's runs only
    jobs = [(name, seed) for name in CANDIDATES for seed in SEEDS]
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    command = "python -m machinery.tools study" + (" --smoke" if smoke else "")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(run_one, CANDIDATES[name], seed, out, deadline, smoke)
                   for name, seed in jobs]
        records = [append(out / "runs.jsonl", future.result(), command) for future in futures]
    return conclude(records, out, smoke)


def conclude(records: list[dict], out: Path, smoke: bool = False) -> dict:
    """The study's report, also written to OUT/study.json: validation accuracies, the choice, and
    the chosen candidate's test accuracies if its validation mean reached TARGET."""
    table = {name: [r.get("valid_accuracy") for r in records if r["candidate"] == name]
             for name in CANDIDATES}
    report = {"target": TARGET, "valid_accuracy": table, "chosen": choose(records)}
    if report["chosen"]:
        mean = statistics.mean(table[report["chosen"]])
        report["chosen_mean_valid_accuracy"] = round(mean, 4)
        if mean >= TARGET and not smoke:
            tests = read_test(report["chosen"], out)
            report.update(test_accuracy=tests,
                          mean_test_accuracy=round(statistics.mean(tests), 4))
        else:
            report["test_accuracy"] = ("not read: " + ("smoke mode" if smoke else
                                       "the chosen candidate's validation mean missed the target"))
    (out / "study.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


LADDER_RECORD = "ladder.jsonl"


def ladder(out: Path, workers: int = 1, minutes: float | None = None, smoke: bool = False,
           rungs: list[Recipe] | None = None, seeds: tuple[int, ...] = SEEDS) -> list[dict]:
    """Every rung of the ladder with every seed (validation by epoch, then test), appended to
    OUT/ladder.jsonl as each run ends, its network saved to OUT/RUNG-sSEED.pt (the references of
    the rungs that are course recipes come from there); runs the file holds are not run again."""
    out.mkdir(parents=True, exist_ok=True)
    record = out / LADDER_RECORD
    done = []
    if record.is_file():
        done = [json.loads(line) for line in record.read_text().splitlines()]
    finished = {(r["candidate"], r["seed"]) for r in done if "best_valid_accuracy" in r}
    rungs = ladder_recipes(smoke=False) if rungs is None else rungs
    jobs = [(rung, seed) for seed in seeds for rung in rungs if (rung.name, seed) not in finished]
    helpers.prepare_data(helpers.DATA_ROOT)  # once, before the workers read it
    deadline = time.time() + 60 * minutes if minutes else None
    command = "python -m machinery.tools ladder" + (" --smoke" if smoke else "")
    if workers <= 1:  # one run at a time, in this process
        runs = (run_one(rung, seed, out, deadline, smoke, test=True) for rung, seed in jobs)
        return done + [append(record, run, command) for run in runs]
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(run_one, rung, seed, out, deadline, smoke, True)
                   for rung, seed in jobs]
        return done + [append(record, future.result(), command) for future in futures]


def append(record: Path, run: dict, command: str) -> dict:
    """One run's line, with the command that made it, at the end of a JSON-lines record, written
    as soon as the run ends."""
    run = {**run, "command": command}
    with open(record, "a") as log:
        log.write(json.dumps(run) + "\n")
    return run
