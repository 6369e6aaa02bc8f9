"""The instructor tools' one command line: `python -m machinery.tools COMMAND ...` (--help lists
them)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import SMOKE_HELP, OneLineParser
from ..recipes import LADDER


class ToolsParser(OneLineParser):
    """One-line errors that point at `python -m machinery.tools ... --help`."""

    def error(self, message: str) -> None:
        command = " ".join(self.prog.split()[1:])
        self.exit(2, f"error: {message} (see: python -m machinery.tools "
                     f"{command + ' ' if command else ''}--help)\n")


def notebook_list(names: list[str]) -> list[Path]:
    """The notebooks named (file names in notebooks/ or notebooks/solutions/), or all of them."""
    from .notebooks import all_notebooks, find_notebook
    return [find_notebook(name) for name in names] if names else all_notebooks()


def run_sync(args) -> int:
    from .notebooks import sync
    for path in notebook_list(args.notebooks):
        print(f"{path.name}: {'updated' if sync(path) else 'up to date'}")
    return 0


def run_publish(args) -> int:
    from .notebooks import ADDRESS_FILE, all_notebooks, publish
    changed = publish(args.repository, args.version, all_notebooks())
    print(f"{ADDRESS_FILE.name}: {args.repository} at {args.version}; "
          f"{len(changed)} notebooks stamped")
    print(f"next: git commit -am 'Publish {args.version}' && git tag {args.version} "
          f"&& git push origin HEAD {args.version}")
    return 0


def run_archive(args) -> int:
    from .notebooks import build_archive
    path = build_archive(args.output)
    print(f"wrote {path} (the course as committed at HEAD): "
          f"upload it to Colab's Files panel, then run the setup cell")
    return 0


def run_lint(args) -> int:
    from .notebooks import lint
    bad = {path.name: problems for path in notebook_list(args.notebooks)
           if (problems := lint(path))}
    for name, problems in bad.items():
        print(f"{name}: " + "; ".join(problems))
    return 1 if bad else 0


def run_execute(args) -> int:
    from .notebooks import execute
    execute(notebook_list(args.notebooks))
    return 0


def run_gpu_runs(args) -> int:
    from .measure import gpu_runs
    for result in gpu_runs():  # meant for a GPU: on a CPU it takes hours
        print(json.dumps(result), flush=True)
    return 0


def run_loadcheck(args) -> int:
    from .measure import load_check
    print(json.dumps(load_check()))
    return 0


def run_images(args) -> int:
    from ..basics import REPO_ROOT
    from .artwork import make_architecture_diagram, make_sample_photo, make_sprite
    for path in (make_sprite(), make_architecture_diagram(), make_sample_photo()):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


def run_reference(args) -> int:
    from .trials import make_reference
    make_reference(args.checkpoint, command=args.command_line, minutes=args.minutes, name=args.name,
                   sharing=args.sharing)
    return 0


def run_trial(args) -> int:
    from .trials import parse_overrides, trial
    print(json.dumps(trial(args.recipe, parse_overrides(args.changes), smoke=args.smoke or None,
                           out=args.out)))
    return 0


def run_flip(args) -> int:
    import helpers
    from .trials import flip_count
    device = helpers.pick_device()
    _, valid_set, _ = helpers.load_datasets(helpers.course_recipe(smoke=False))  # never the test
    for checkpoint in args.checkpoints:
        print(json.dumps(flip_count(checkpoint, valid_set, device)))
    return 0


def run_study(args) -> int:
    from .study import study
    print(json.dumps(study(args.out, args.workers, args.minutes, args.smoke)))
    return 0


def run_ladder(args) -> int:
    from ..recipes import ladder_recipes
    from .study import ladder
    every_rung = ladder_recipes(smoke=False)
    rungs = [every_rung[i] for i in args.rungs]
    for run in ladder(args.out, args.workers, args.minutes, args.smoke, rungs, tuple(args.seeds)):
        print(json.dumps({k: v for k, v in run.items() if k != "valid_accuracy_by_epoch"}))
    return 0


def study_options(parser: argparse.ArgumentParser, out: str, where: str) -> None:
    """The options `study` and `ladder` share: where, how many runs at once, until when, smoke."""
    parser.add_argument("--out", type=Path, default=Path(out), help=where)
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (processes)")
    parser.add_argument("--minutes", type=float, help="stop runs that would end later than this")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def run_mutate(args) -> int:
    from .mutations import mutate
    report = mutate(args.only)
    print(json.dumps(report))
    return 0 if not report["survivors"] else 1


def make_parser() -> argparse.ArgumentParser:
    """The parser of `python -m machinery.tools`."""
    parser = ToolsParser(prog="machinery.tools",
                         description="Instructor tools for the Fashion-MNIST course.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ToolsParser)
    for name, run, text in (("sync", run_sync,
                             "stamp the Colab badge and the setup cell into the notebooks"),
                            ("lint", run_lint, "list what would fail the notebook lint test"),
                            ("execute", run_execute,
                             "re-run notebooks top to bottom in place, in full mode")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                         help="file names in notebooks/ (default: all)")
        sub.set_defaults(run=run)
    publish = commands.add_parser("publish",
                                  help="record where the course is published and stamp it into "
                                  "every badge and setup cell")
    publish.add_argument("repository",
                         help="the course's repository, "
                         "e.g. https://github.com/OWNER/fashion-mnist-cnn.git")
    publish.add_argument("version",
                         help="the tag the notebooks fetch in Colab, e.g. v1.0 "
                         "(not a branch or a commit)")
    publish.set_defaults(run=run_publish)
    archive = commands.add_parser("archive",
                                  help="the committed course as one zip, for a class without a "
                                  "public repository")
    archive.add_argument("-o", "--output", type=Path, default=Path("fashion-mnist-cnn.zip"))
    archive.set_defaults(run=run_archive)
    commands.add_parser("gpu-runs", help="GPU: fp16/bf16/fp32 short runs, and time to 93%% on "
                        "short schedules, eager and compiled").set_defaults(run=run_gpu_runs)
    commands.add_parser("loadcheck", help="memory while evaluating and predicting thousands of "
                        "times").set_defaults(run=run_loadcheck)
    commands.add_parser("images", help="draw the sprite, the architecture diagram and the sample "
                        "photo in images/").set_defaults(run=run_images)
    reference = commands.add_parser("reference",
                                    help="ship a trained checkpoint as reference/NAME.pt")
    reference.add_argument("checkpoint", type=Path)
    reference.add_argument("minutes", type=float, help="how long it trained")
    reference.add_argument("command_line", metavar="COMMAND", help="the command that trained it")
    reference.add_argument("name", nargs="?",
                           help="reference/NAME.pt (default: the recipe's name; the network's "
                           "for an older checkpoint)")
    reference.add_argument("--sharing", type=int, default=1, metavar="N",
                           help="how many training runs shared the machine, this one included "
                           "(its minutes are then not what a run alone costs)")
    reference.set_defaults(run=run_reference)
    trial = commands.add_parser("trial",
                                help="train a recipe variant; report validation figures only")
    trial.add_argument("recipe")
    trial.add_argument("changes", nargs="*", metavar="KEY=VALUE")
    trial.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    trial.add_argument("--out", type=Path, help="checkpoints and runs under this folder")
    trial.set_defaults(run=run_trial)
    flip = commands.add_parser("flip", help="flip test-time augmentation against none, counted "
                               "image by image on the validation split (never the test set)")
    flip.add_argument("checkpoints", type=Path, nargs="+", metavar="CHECKPOINT")
    flip.set_defaults(run=run_flip)
    study = commands.add_parser("study", help="the accuracy recipe's study: candidates x 3 "
                                "seeds, chosen on validation; test read once, for the chosen")
    study_options(study, "checkpoints/study", "checkpoints, runs.jsonl and study.json go here")
    study.set_defaults(run=run_study)
    ladder = commands.add_parser("ladder", help="notebook 10's ladder: each rung x 3 seeds, "
                                 "appended to OUT/ladder.jsonl with each network; resumes")
    study_options(ladder, "checkpoints/ladder",
                  "ladder.jsonl and the networks go here (runs it holds are not run again)")
    rungs = range(len(LADDER))
    ladder.add_argument("--rungs", type=int, nargs="+", choices=rungs, default=list(rungs),
                        metavar="I", help="only these rungs (0 to 5; default: all), e.g. the "
                        "first and last first")
    ladder.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S",
                        help="the seeds to run (default: 0 1 2)")
    ladder.set_defaults(run=run_ladder)
    mutate = commands.add_parser("mutate",
                                 help="put named one-line bugs into a copy of the course, one at a "
                                 "time, and check that the tests catch each (minutes)")
    mutate.add_argument("only", nargs="*", metavar="WORD",
                        help="only the mutants whose names contain a WORD")
    mutate.set_defaults(run=run_mutate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m machinery.tools`; returns the exit status."""
    args = make_parser().parse_args(argv)
    try:
        return args.run(args)
    # a bad KEY=VALUE, an unknown recipe: one line, as the student CLI does
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
