"""The command line: `python helpers.py train | evaluate | bench` (helpers.py hands over to
main)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .basics import DATA_ROOT, RUNS_ROOT, CourseError, pick_device
from .recipes import RECIPES, SMOKE_SIZES

SMOKE_HELP = f"{SMOKE_SIZES['train_size']:,} training images, 2 epochs"  # every --smoke


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line instead of the usage block."""

    def error(self, message: str) -> None:
        # "helpers.py train" -> "train"; the top level: ""
        command = " ".join(self.prog.split()[1:])
        self.exit(2, f"error: {message} (see: python {self.prog.split()[0]} "
                     f"{command + ' ' if command else ''}--help)\n")


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def train_command(args: argparse.Namespace) -> None:
    """Train one recipe end to end, save best and last checkpoints, print test accuracy."""
    from . import runs
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                   ("compile", args.compile), ("final_fit", args.final_fit)) if v}
    state = None
    # the run's own recipe; only --epochs (to train longer) and --compile may change
    if args.resume:
        chosen = {"model": args.model, "recipe": args.recipe, "fast": args.fast,
                  "smoke": args.smoke, "out": args.out, "runs": args.runs}
        recipe, state = runs.resumed_recipe(args.resume, **overrides, **chosen)
    else:
        recipe = runs.choose_recipe(args.model, args.recipe, args.fast, args.smoke, **overrides)
    report = runs.train(recipe, pick_device(args.device), data=args.data,
                        runs=args.runs or RUNS_ROOT,
                        out=args.out, resume=args.resume, state=state)
    on_all = f" on all {report['train_images']:,} training images" if recipe.final_fit else ""
    print(f"trained {report['epochs']} epochs{on_all} in {report['minutes']:.1f} min"
          f"{' (early stop)' if report['stopped_early'] else ''}")
    loss, accuracy, path = report["last"]
    last = f"{accuracy:.2%} (loss {loss:.4f}) -> {path}"
    # a final fit: no held-out validation, so no best epoch; the result is the last one
    if "best" not in report:
        print(f"test accuracy on {report['test_images']:,} images: {last}")
        return
    loss, accuracy, path = report["best"]
    print(f"test accuracy on {report['test_images']:,} images: last {last}; "
          f"best {accuracy:.2%} (loss {loss:.4f}, epoch {report['best_epoch']}) -> {path}")


def evaluate_command(args: argparse.Namespace) -> None:
    """Evaluate one or more checkpoints on the full 10,000-image test set (one line each)."""
    from .runs import evaluate_checkpoints
    for result in evaluate_checkpoints(args.checkpoint, pick_device(args.device), args.data):
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{result['checkpoint']}: {result['model']} "
                  f"({result['params']:,} parameters, epoch "
                  f"{result['epoch']}): test accuracy {result['test_accuracy']:.2%}, test loss "
                  f"{result['test_loss']:.4f} on {result['test_images']:,} images")


def bench_command(args: argparse.Namespace) -> None:
    """Training images/s of the original recipe and the fast path, side by side on this machine."""
    from .bench import print_bench, print_sprint
    if args.sprint:
        print_sprint(json_output=args.json)
        return
    print_bench(json_output=args.json, compiled=True if args.compile else None)


def make_parser() -> argparse.ArgumentParser:
    """The `python helpers.py` parser, with its three commands."""
    parser = OneLineParser(prog="helpers.py",
                           description="Fashion-MNIST course: train and evaluate.")
    # argparse makes the commands' parsers of the parser's own class: one-line errors too
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a network end to end and report test accuracy")
    train.set_defaults(run=train_command)
    train.add_argument("--model",
                       help="the network to train (original, improved, ...): trains the course "
                       "recipe for it; default: original")
    train.add_argument("--recipe",
                       help=f"a recipe by name: {', '.join(RECIPES)} (default: the network's)")
    train.add_argument("--epochs", type=positive_int,
                       help="maximum epochs (default: the recipe's: 50 original, 25 --fast, "
                       "24 improved; smoke: 2)")
    train.add_argument("--batch-size", type=positive_int,
                       help="training batch size (default: 16 original, 128 --fast, 256 improved)")
    train.add_argument("--fast", action="store_true",
                       help="the original network on the fast path: data on the device, "
                       "channels-last, mixed precision on a GPU, batch 128, one-cycle, 25 epochs "
                       "(--model improved always runs on it)")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile the network, with CUDA graphs on a GPU (the first "
                       "batches pay for compiling; slower than plain PyTorch on a CPU)")
    train.add_argument("--smoke", action="store_true",
                       help=f"{SMOKE_HELP} (as FMNIST_SMOKE=1)")
    train.add_argument("--final-fit", action="store_true",
                       help="train on all 60,000 images, the validation ones too: only for a "
                       "recipe already chosen on validation (nothing is held out to check it)")
    train.add_argument("--resume", metavar="LAST_CHECKPOINT",
                       help="carry on an interrupted run from its last checkpoint (NAME-last.pt) "
                       "with its own recipe; only --epochs and --compile may change")
    train.add_argument("--runs",
                       help="TensorBoard runs folder (default: runs/)")
    train.add_argument("--out",
                       help="best checkpoint path (default: checkpoints/RECIPE.pt, "
                       "smoke: RECIPE-smoke.pt); the last one is saved beside it as NAME-last.pt")
    evaluate = commands.add_parser("evaluate",
                                   help="evaluate checkpoints on the 10,000 test images")
    evaluate.set_defaults(run=evaluate_command)
    evaluate.add_argument("checkpoint", type=Path, nargs="+")
    evaluate.add_argument("--json", action="store_true",
                          help="print one JSON object per checkpoint")
    bench = commands.add_parser("bench",
                                help="training images/s: the original recipe vs the fast path")
    bench.set_defaults(run=bench_command)
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--compile", action="store_true",
                       help="also time the compiled fast path (always on a GPU)")
    bench.add_argument("--sprint", action="store_true",
                       help="the sprint recipe, 3 seeds, against the original recipe's time to "
                       "93%% validation accuracy, side by side (a few minutes on 2 CPU cores "
                       "with AMX, in bf16; about three times as long in fp32)")
    for sub in (train, evaluate):
        sub.add_argument("--device", default="auto",
                         help="auto (default), cpu, cuda, cuda:N or mps")
        sub.add_argument("--data", default=str(DATA_ROOT), help="data root (default: data/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python helpers.py`; returns the exit status."""
    args = make_parser().parse_args(argv)
    try:
        args.run(args)
    except (CourseError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # a run with a finished epoch names its checkpoint
        last = getattr(interrupt, "last_path", None)
        resumable = f" (continue with: python helpers.py train --resume {last})" if last else ""
        print(f"interrupted{resumable}", file=sys.stderr)
        return 130
    return 0
