"""Stage 10 as a controlled experiment: the ladder from original-fast to improved, one change per
rung (machinery.recipes.LADDER)."""
import dataclasses

import pytest

import helpers
from machinery import engine
from machinery.recipes import LADDER, RECIPES, SMOKE_SIZES, ladder_recipes

# ---- the ladder ----------------------------------------------------------------------------------

def changed_fields(before, after) -> set[str]:
    return {f.name for f in dataclasses.fields(before)
            if f.name != "name" and getattr(before, f.name) != getattr(after, f.name)}


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


def test_smoke_mode_shrinks_every_rung_alike(monkeypatch):
    full, smoke = ladder_recipes(smoke=False), ladder_recipes(smoke=True)
    for big, small in zip(full, smoke):
        assert ((small.epochs, small.train_size, small.valid_size, small.test_size)
                == (2, *SMOKE_SIZES.values()))
        assert dataclasses.replace(small, epochs=big.epochs, train_size=None, valid_size=None,
                                   test_size=None) == big
    monkeypatch.setenv("FMNIST_SMOKE", "1")
    assert ladder_recipes() == smoke


def test_the_second_rung_trains_a_smoke_epoch_on_the_cpu(small_sets, cpu, tmp_path):
    train, valid, _ = small_sets
    rung = dataclasses.replace(ladder_recipes(smoke=True)[1], epochs=1)
    lines = []
    model, history, _ = engine.train_run(rung, helpers.first(train, 64), helpers.first(valid, 64),
                                         cpu, run_dir=tmp_path / "run",
                                         last_path=tmp_path / "last.pt", log=lines.append)
    assert (history.epochs == 1 and 0 < history.train_loss[0] < 5
            and 0 <= history.valid_accuracy[0] <= 1)
    assert lines[0].startswith("recipe ladder-1-improved-network: improved (261,298 parameters)")
    assert helpers.read_checkpoint(tmp_path / "last.pt")["recipe"] == "ladder-1-improved-network"


# ---- the ladder study (python -m machinery.tools ladder) -------------------------------------

def test_the_ladder_study_reads_the_test_set_after_training_and_resumes(tmp_path, monkeypatch):
    from machinery.tools import study
    training, tests_read = [], []
    loaded, run_epochs, make_eval_loader = (engine.recipe_datasets, engine.run_epochs,
                                            engine.make_eval_loader)

    def spied_datasets(recipe, root):
        train, valid, test = loaded(recipe, root)
        tests_read.append([test, 0])
        return train, valid, test

    def spied_run_epochs(*args, **kwargs):
        training.append(True)
        try:
            return run_epochs(*args, **kwargs)
        finally:
            training.clear()

    def spied_eval_loader(recipe, dataset, device):  # where the fast path reads a set's images
        if dataset is tests_read[-1][0]:
            assert not training, "the ladder read the test set during training"
            tests_read[-1][1] += 1
        return make_eval_loader(recipe, dataset, device)

    monkeypatch.setattr(engine, "recipe_datasets", spied_datasets)
    monkeypatch.setattr(engine, "run_epochs", spied_run_epochs)
    monkeypatch.setattr(engine, "make_eval_loader", spied_eval_loader)
    rungs = [dataclasses.replace(rung, train_size=256, valid_size=128, test_size=128, epochs=2)
             for rung in ladder_recipes(smoke=True)[:2]]
    first = study.ladder(tmp_path, rungs=rungs, seeds=(0,))
    assert [(r["candidate"], r["seed"]) for r in first] == [(rungs[0].name, 0),
                                                            (rungs[1].name, 0)]
    for run in first:
        by_epoch = run["valid_accuracy_by_epoch"]
        assert run["epochs"] == len(by_epoch) == 2 and run["valid_accuracy"] == by_epoch[-1]
        assert run["best_valid_accuracy"] == max(by_epoch) == by_epoch[run["best_epoch"] - 1]
        assert 0 <= run["test_accuracy"] <= 1
        assert run["command"] == "python -m machinery.tools ladder"
        saved = helpers.read_checkpoint(tmp_path / run["checkpoint"])
        assert saved["epoch"] == 2 and saved["recipe"] == run["candidate"]
    written = (tmp_path / study.LADDER_RECORD).read_text()
    # a second call runs only the seed the record lacks, and keeps what it holds
    both = study.ladder(tmp_path, rungs=rungs, seeds=(0, 1))
    assert [(r["candidate"], r["seed"]) for r in both[2:]] == [(rungs[0].name, 1),
                                                               (rungs[1].name, 1)]
    assert both[:2] == first
    lines = (tmp_path / study.LADDER_RECORD).read_text()
    assert lines.startswith(written) and len(lines.splitlines()) == 4
    assert study.ladder(tmp_path, rungs=rungs, seeds=(0, 1)) == both  # nothing left to run
    assert [reads for _, reads in tests_read] == [1, 1, 1, 1]  # once a run, after training


# ---- notebook 10's clock: every rung timed alike on one machine --------------------------------

@pytest.mark.parametrize("batch_size, warm_up", [(32, 4 * 32), (64, 128)])  # 128: the share
def test_run_minutes_times_one_epoch_of_the_rung_itself_on_a_share_and_scales_it(
        small_sets, cpu, monkeypatch, batch_size, warm_up):
    """The timed epoch runs the rung's own settings on its share of both sets (a warm-up of four
    batches first, or of the share if that is smaller), and its seconds scale to the whole
    training set and every epoch of the rung."""
    from machinery import bench
    train, valid, _ = small_sets
    rung = dataclasses.replace(ladder_recipes(smoke=True)[3], epochs=7, batch_size=batch_size)
    seen = []

    def spy(model, train_loader, valid_loader, recipe, *args, **kwargs):
        seen.append((recipe, len(train_loader.dataset), len(valid_loader.dataset),
                     type(model).__name__))
        return None

    clock = iter([0.0, 1.0, 10.0, 12.5])  # the warm-up takes 1 s, the timed epoch 2.5 s
    monkeypatch.setattr(bench, "run_epochs", spy)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    minutes = bench.run_minutes(rung, train, valid, cpu, share=0.25)
    share = round(len(train) * 0.25)
    assert minutes == 2.5 * len(train) / share * 7 / 60
    assert [images for _, images, _, _ in seen] == [warm_up, share]
    assert seen[1][2] == round(share * len(valid) / len(train))
    assert seen[1][0] == dataclasses.replace(rung, epochs=1)
    assert seen[1][3] == "ImprovedCNN"


def test_the_ladder_command_runs_the_rungs_and_seeds_asked_for(monkeypatch, tmp_path, capsys):
    """`ladder --rungs 0 5 --seeds 1 2`: the first and last rungs' missing seeds first."""
    from machinery.tools import cli, study
    calls = []
    monkeypatch.setattr(study, "ladder", lambda *args: calls.append(args) or [])
    assert cli.main(["ladder", "--out", str(tmp_path), "--rungs", "0", "5", "--seeds", "1", "2",
                     "--workers", "2", "--smoke"]) == 0
    out, workers, minutes, smoke, rungs, seeds = calls.pop()
    assert (out, workers, minutes, smoke, seeds) == (tmp_path, 2, None, True, (1, 2))
    assert rungs == [ladder_recipes(smoke=False)[0], ladder_recipes(smoke=False)[5]]
    assert cli.main(["ladder", "--out", str(tmp_path)]) == 0
    assert calls.pop()[3:] == (False, ladder_recipes(smoke=False), (0, 1, 2))
