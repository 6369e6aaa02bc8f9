"""The command line: `python helpers.py train | evaluate`, and one clear line on bad input."""
import argparse
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import helpers
from machinery import bench, cli, engine, recipes, runs

SMOKE_TEST_IMAGES = recipes.SMOKE_SIZES["test_size"]

HELPERS = str(helpers.REPO_ROOT / "helpers.py")


def run_cli(*args, env=None):
    env = {**os.environ, **(env or {})}
    env.pop("FMNIST_SMOKE", None)
    return subprocess.run([sys.executable, HELPERS, *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=helpers.REPO_ROOT)


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("cli") / "smoke.pt"
    result = run_cli("train", "--epochs", "1", "--smoke", "--out", str(out),
                     "--runs", str(out.parent / "runs"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    # output to a file or a CI log: no progress bar
    assert "%|" not in result.stderr and "\r" not in result.stderr
    return out, result.stdout


def test_train_smoke_reports_test_accuracy_and_saves_both_checkpoints(smoke_checkpoint):
    out, stdout = smoke_checkpoint
    assert "epoch   1/1" in stdout and f"test accuracy on {SMOKE_TEST_IMAGES:,} images" in stdout
    assert re.search(r"^trained 1 epochs in \d+\.\d min$", stdout, re.MULTILINE), stdout
    assert "(~0 min left)" in stdout  # the time left in the run, after each epoch
    assert out.is_file() and out.with_name("smoke-last.pt").is_file()
    assert list((out.parent / "runs").glob("original-b16-*-smoke-*/events.out.tfevents.*"))


def test_training_in_a_terminal_shows_a_progress_bar_with_the_time_left(tmp_path, data_root):
    # a terminal of 24 x 100 characters, as a student's shell gives
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("FMNIST_SMOKE", "TQDM_DISABLE")}
    process = subprocess.Popen([sys.executable, HELPERS, "train", "--fast", "--epochs", "1",
                                "--smoke", "--out", str(tmp_path / "tty.pt"),
                                "--runs", str(tmp_path / "runs"), "--device", "cpu"],
                               stdout=subprocess.DEVNULL, stderr=secondary, env=env,
                               cwd=helpers.REPO_ROOT)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the program ended and closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert process.wait(timeout=300) == 0
    terminal = seen.decode(errors="replace")
    assert "train:" in terminal and "%|" in terminal and "batch" in terminal, terminal[-500:]


def test_a_final_fit_reports_its_last_epoch_only(tmp_path, data_root):
    out = tmp_path / "final.pt"
    result = run_cli("train", "--fast", "--final-fit", "--epochs", "1", "--smoke",
                     "--out", str(out), "--runs", str(tmp_path / "runs"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "final fit: the validation images are in the training set" in result.stdout
    assert re.search(r"^trained 1 epochs on all [\d,]+ training images in \d+\.\d min$",
                     result.stdout, re.MULTILINE), result.stdout
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line.startswith(f"test accuracy on {SMOKE_TEST_IMAGES:,} images: ")
    assert "best" not in last_line
    assert last_line.endswith(str(tmp_path / "final-last.pt"))
    assert helpers.read_checkpoint(tmp_path / "final-last.pt")["settings"]["final_fit"]
    assert not out.exists()  # no "best" epoch without held-out validation
    assert list((tmp_path / "runs").glob("original-fast-b128-*-final-smoke-*"))


@pytest.mark.parametrize("flags, report, printed", [
    ([], {"epochs": 7, "minutes": 1.54, "stopped_early": True, "test_images": 1000,
          "train_images": 800, "last": (0.25, 0.91, "a-last.pt"), "best": (0.22, 0.92, "a.pt"),
          "best_epoch": 5},
     "trained 7 epochs in 1.5 min (early stop)\n"
     "test accuracy on 1,000 images: last 91.00% (loss 0.2500) -> a-last.pt; "
     "best 92.00% (loss 0.2200, epoch 5) -> a.pt\n"),
    (["--fast", "--final-fit"], {"epochs": 3, "minutes": 2.0, "stopped_early": False,
                                 "test_images": 10000, "train_images": 60000,
                                 "last": (0.2, 0.931, "f-last.pt")},
     "trained 3 epochs on all 60,000 training images in 2.0 min\n"
     "test accuracy on 10,000 images: 93.10% (loss 0.2000) -> f-last.pt\n"),
])
def test_train_prints_what_the_run_reports(flags, report, printed, monkeypatch, capsys):
    monkeypatch.setattr(runs, "train", lambda *args, **kwargs: report)
    assert cli.main(["train", "--smoke", "--device", "cpu", *flags]) == 0
    assert capsys.readouterr().out == printed


def test_a_count_below_one_is_refused_before_anything_runs():
    # `--epochs 0` let through would start a run of the recipe's own length
    for text, message in (("0", "must be at least 1, got 0"), ("-3", "must be at least 1, got -3"),
                          ("1.5", "'1.5' is not a whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            cli.positive_int(text)
    assert cli.positive_int("1") == 1


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "0"], "argument --epochs: must be at least 1"),
    (["train", "--batch-size", "sixteen"],
     "argument --batch-size: 'sixteen' is not a whole number"),
    (["train", "--model", "resnet50"],
     "unknown network 'resnet50': choose one of original, improved"),
    (["train", "--smoke", "--device", "gpu"], "unknown device 'gpu'"),
    (["evaluate", "missing.pt"], "no checkpoint at missing.pt"),
    (["evaluate", "requirements.txt"], "requirements.txt is not a readable PyTorch checkpoint"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["train", "--resume", "x-last.pt", "--batch-size", "64", "--fast"],
     "a resumed run keeps its recipe and files: batch_size, fast cannot change"),
    (["train", "--resume", "x-last.pt", "--model", "improved", "--epochs", "60"],
     "a resumed run keeps its recipe and files: model cannot change (only epochs and compile "
     "may)"),
    (["train", "--resume", "x-last.pt", "--out", "mine.pt", "--runs", "elsewhere"],
     "a resumed run keeps its recipe and files: out, runs cannot change"),
    (["train", "--resume", "x-last.pt", "--recipe", "sprint", "--smoke", "--final-fit"],
     "a resumed run keeps its recipe and files: final_fit, recipe, smoke cannot change"),
])
def test_bad_input_exits_with_one_clear_line(args, message, capsys, monkeypatch):
    def trained(*args, **kwargs):  # a bad input let through fails here, not after a whole run
        raise AssertionError("the command trained instead of refusing its input")

    monkeypatch.setattr(runs, "train", trained)
    # in-process (the same main() that `python helpers.py` runs): no interpreter start per case
    try:
        status = cli.main(args)
    except SystemExit as exit_:  # argparse exits by itself
        status = exit_.code
    stderr = capsys.readouterr().err
    assert status != 0
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr


def test_resuming_from_a_best_checkpoint_says_which_file_to_resume(tmp_path, capsys):
    # a best checkpoint holds the recipe but no training state: the commonest wrong file
    best = engine.save(tmp_path / "original.pt", helpers.build_model("original"),
                       helpers.course_recipe(smoke=True), 3, {})
    assert cli.main(["train", "--resume", str(best)]) == 1
    assert capsys.readouterr().err == (f"error: {best} is not the last checkpoint of a run: "
                                       f"nothing to resume\n")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_the_device_is_the_gpu_when_there_is_one_unless_asked(command):
    args = [command] + (["x.pt"] if command == "evaluate" else [])
    assert cli.make_parser().parse_args(args).device == "auto"  # pick_device: a GPU if any


class Terminal(io.StringIO):
    """A stderr where a bar shows (off a terminal tqdm is off by itself)."""

    def isatty(self):
        return True


@pytest.fixture
def bars_on(monkeypatch) -> None:
    """TQDM_DISABLE unset, and no tqdm monitor thread left running. (A test sets stderr to a
    Terminal itself: pytest puts its own capture back on sys.stderr after the fixtures run.)"""
    from tqdm import std
    monkeypatch.setattr(std.tqdm, "monitor_interval", 0)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)


def test_tqdm_disable_switches_the_progress_bars_off(monkeypatch, bars_on):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not helpers.progress(range(3), "train").disable  # a bar
    monkeypatch.setenv("TQDM_DISABLE", "1")  # how stored outputs and CI runs are made
    assert helpers.progress(range(3), "train").disable is True


def test_a_progress_bar_names_its_batches_redraws_once_a_second_and_clears_itself(monkeypatch,
                                                                                 bars_on):
    from tqdm import std
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    clock = [1000.0]
    monkeypatch.setattr(std, "time", lambda: clock[0])  # tqdm's clock, read when a bar starts

    class Batches:  # 20 batches of a quarter of a second each, with a length as a DataLoader
        def __len__(self):
            return 20

        def __iter__(self):
            for batch in range(20):
                clock[0] += 0.25
                yield batch

    assert list(helpers.progress(Batches(), "train")) == list(range(20))
    shown = terminal.getvalue()
    frames = [frame for frame in shown.split("\r") if frame.strip()]
    assert all(frame.startswith("train: ") and "batch/s" in frame for frame in frames), frames
    # redrawn once a second, not ten times (a notebook's output stays small)
    assert [re.search(r"(\d+)/20 ", frame).group(1) for frame in frames] == [
        "0", "4", "8", "12", "16", "20"]
    assert shown.endswith("\r") and not shown.split("\r")[-2].strip()  # the bar cleared at the end
    assert "\n" not in shown


def test_fmnist_checkpoints_moves_where_the_course_keeps_checkpoints(tmp_path):
    # read once, when the course is imported: a fresh interpreter, as a student's kernel is
    env = {**os.environ, "FMNIST_CHECKPOINTS": str(tmp_path / "mine")}
    where = subprocess.run([sys.executable, "-c", "from machinery import basics; "
                            "print(basics.CHECKPOINTS)"], cwd=helpers.REPO_ROOT, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(tmp_path / "mine")


def test_help_names_the_program_and_says_what_it_is_for(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: helpers.py ")
    assert "\nFashion-MNIST course: train and evaluate.\n" in shown


def test_no_command_asks_for_one_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: the following arguments are required: command "
                                       "(see: python helpers.py --help)\n")


def test_ctrl_c_says_how_to_carry_on_and_exits_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def interrupted_after_an_epoch(*args, **kwargs):
        raise runs.RunInterrupted(Path("checkpoints/original-smoke-last.pt"))

    monkeypatch.setattr(runs, "train", interrupted_after_an_epoch)
    assert cli.main(["train", "--smoke", "--device", "cpu"]) == 130  # as a shell reports Ctrl-C
    assert capsys.readouterr().err == ("interrupted (continue with: python helpers.py train "
                                       "--resume checkpoints/original-smoke-last.pt)\n")
    monkeypatch.setattr(runs, "train", interrupted)  # e.g. while loading the data: nothing kept
    assert cli.main(["train", "--smoke", "--device", "cpu"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    monkeypatch.setattr(cli, "evaluate_command", interrupted)  # the parser is built in main()
    assert cli.main(["evaluate", "x.pt"]) == 130
    assert capsys.readouterr().err == "interrupted\n"  # nothing written to carry on from


@pytest.mark.parametrize("args, hint", [
    (["train", "--epochs", "0"], "(see: python helpers.py train --help)"),
    (["frobnicate"], "(see: python helpers.py --help)"),
])
def test_a_bad_argument_points_to_the_help_of_its_own_command(args, hint, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2  # argparse's status for a usage error
    assert capsys.readouterr().err.endswith(f" {hint}\n")


def test_evaluate_json_prints_each_checkpoints_line_as_soon_as_it_is_scored(monkeypatch):
    # stdout as a pipe has it: buffered, so a line is out only once it is flushed
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="utf-8"))
    results = [{"checkpoint": "a.pt", "test_accuracy": 0.9}, {"checkpoint": "b.pt"}]

    def scored_one_by_one(paths, device, data):
        yield results[0]
        assert out.getvalue() == b'{"checkpoint": "a.pt", "test_accuracy": 0.9}\n'
        yield results[1]

    monkeypatch.setattr(runs, "evaluate_checkpoints", scored_one_by_one)
    assert cli.main(["evaluate", "--json", "a.pt", "b.pt", "--device", "cpu"]) == 0
    assert [json.loads(line) for line in out.getvalue().splitlines()] == results


@pytest.mark.parametrize("flags, asked", [
    ([], {"json_output": False, "compiled": None}),
    (["--json", "--compile"], {"json_output": True, "compiled": True}),
])
def test_bench_passes_its_flags_on(flags, asked, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "print_bench", lambda **kwargs: calls.append(kwargs))
    assert cli.main(["bench", *flags]) == 0
    assert calls == [asked]


def test_bad_checkpoint_through_the_real_command_line(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    result = run_cli("evaluate", str(tmp_path / "notes.pt"))
    assert result.returncode == 1
    assert (result.stderr.startswith("error: ")
            and "notes.pt is not a readable PyTorch checkpoint" in result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_missing_data_exits_with_one_clear_line(tmp_path):
    result = run_cli("evaluate", str(helpers.REFERENCE / "original.pt"),
                     "--data", str(tmp_path / "data"),
                     env={"FMNIST_DATA": str(tmp_path / "empty")})
    assert result.returncode == 1
    assert "does not hold all four Fashion-MNIST files" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


class TinyNet(nn.Module):
    """A third network, known only to these tests: one linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.flatten(1))


def test_a_third_network_and_its_recipe_are_one_entry_each_and_train_as_asked(
        monkeypatch, tmp_path, data_root):
    monkeypatch.setitem(helpers.NETWORKS, "tiny", TinyNet)
    monkeypatch.setitem(recipes.RECIPES, "tiny-fast", recipes.Recipe(
        "tiny-fast", network="tiny", fast=True, batch_size=256, epochs=3, lr=3e-3,
        schedule="onecycle"))
    out = tmp_path / "tiny.pt"
    status = cli.main(["train", "--model", "tiny", "--smoke", "--epochs", "1", "--out", str(out),
                       "--runs", str(tmp_path / "runs"), "--device", "cpu"])
    assert status == 0
    saved = helpers.read_checkpoint(tmp_path / "tiny-last.pt")
    assert ((saved["model"], saved["recipe"], saved["architecture"])
            == ("tiny", "tiny-fast", "TinyNet"))
    assert saved["settings"]["epochs"] == 1 and saved["settings"]["fast"]
    assert [p.name.split("-b256-")[0] for p in (tmp_path / "runs").iterdir()] == ["tiny-fast"]
    model, meta = helpers.load_checkpoint(out)
    assert isinstance(model, TinyNet) and meta["recipe"] == "tiny-fast"


def test_the_command_line_never_trains_another_network_than_the_one_asked_for(monkeypatch, capsys):
    monkeypatch.setitem(helpers.NETWORKS, "tiny", TinyNet)  # a network with no recipe yet
    assert cli.main(["train", "--model", "tiny", "--smoke"]) == 1
    assert "no recipe trains the network 'tiny'" in capsys.readouterr().err
    assert cli.main(["train", "--model", "improved", "--recipe", "original", "--smoke"]) == 1
    assert ("recipe 'original' trains the 'original' network, not 'improved'"
            in capsys.readouterr().err)
    assert cli.main(["train", "--recipe", "no-such-recipe", "--smoke"]) == 1
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err
