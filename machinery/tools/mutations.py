"""Named mutations: realistic one-line bugs, each put into a copy of the course, and the tests that
should catch it run against that copy (`python -m machinery.tools mutate`). On demand, not part of
the test suite: it takes minutes. The working tree is never touched.

A mutant is *caught* when its tests fail, *survives* when they pass. A survivor is either a gap in
the tests (write one) or equivalent (it cannot change anything a user can see): say which below.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..basics import DATA_ROOT, REPO_ROOT


@dataclass(frozen=True)
class Mutant:
    """One bug: in `path`, `original` (found exactly once) becomes `mutated`; `tests` should catch
    it."""
    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


DATA, LOOP, RESUME = (("tests/test_data.py",), ("tests/test_training.py", "tests/test_resume.py"),
                      ("tests/test_resume.py",))
CHECKPOINTS, PREDICT = (("tests/test_checkpoints.py",),
                        ("tests/test_model.py", "tests/test_predict_and_evaluate.py",
                         "tests/test_photos.py"))
FAST = ("tests/test_fast_path.py",)
STAGE10 = ("tests/test_ladder.py",)

MUTANTS = [
    # the split and the loaders
    Mutant("split seed 42 -> 0", "helpers.py", "seed: int = 42)", "seed: int = 0)", DATA),
    Mutant("split 50,000 / 10,000 -> 55,000 / 5,000", "helpers.py", "[50_000, 10_000]",
           "[55_000, 5_000]", DATA),
    Mutant("final fit forgets the validation images", "machinery/engine.py",
           "[*train.indices, *valid.indices]", "[*train.indices]", DATA),
    Mutant("make_loader ignores shuffle=True", "helpers.py",
           "shuffle=shuffle, generator=generator,", "shuffle=False, generator=generator,", DATA),
    Mutant("DeviceLoader ignores shuffle", "machinery/fast_path.py", "if self.shuffle else",
           "if False else", FAST),
    Mutant("DeviceLoader scales by 256", "machinery/fast_path.py", ".float().div_(255)",
           ".float().div_(256)", FAST),
    Mutant("evaluation batches augmented", "machinery/engine.py",
           "return DeviceLoader(dataset, 1000, device=device)",
           "return DeviceLoader(dataset, 1000, device=device, augment=recipe.augment)", FAST),
    Mutant("ladder rungs not cumulative", "machinery/recipes.py", "recipe = replace(recipe, name=",
           'recipe = replace(RECIPES["original-fast"], name=', STAGE10),
    Mutant("smoke mode keeps every image", "machinery/recipes.py",
           "replace(recipe, epochs=2, **SMOKE_SIZES)", "replace(recipe, epochs=2)", DATA),
    # the loop
    Mutant("epoch loss: mean of batch means", "helpers.py", "seen += len(labels)\n", "seen += 1\n",
           LOOP),
    Mutant("epoch loss: batch means summed unweighted", "helpers.py",
           "total_loss += loss.detach() * len(labels)", "total_loss += loss.detach()", LOOP),
    Mutant("train_one_epoch in eval mode", "helpers.py", "    model.train()       ",
           "    model.eval()        ", LOOP),
    Mutant("no zero_grad", "helpers.py", "optimizer.zero_grad()   ", "pass   ", LOOP),
    Mutant("evaluate without no_grad", "helpers.py",
           "@torch.no_grad()                                   "
           "# no gradients: faster, less memory\ndef evaluate(", "def evaluate(", LOOP),
    Mutant("evaluate in train mode", "helpers.py",
           "    model.eval()                                   #",
           "    model.train()                                  #", LOOP + PREDICT),
    Mutant("evaluate: mean of batch means", "helpers.py",
           "total_loss += loss_fn(logits, labels) * len(labels)",
           "total_loss += loss_fn(logits, labels) * len(loader.dataset) / len(loader)", LOOP),
    Mutant("early stopping: a tie is an improvement", "helpers.py",
           "if valid_loss < self.best_loss:", "if valid_loss <= self.best_loss:", LOOP),
    Mutant("early stopping one epoch late (the original's trigger > patience)", "helpers.py",
           "return self.bad_epochs >= self.patience", "return self.bad_epochs > self.patience",
           LOOP),
    Mutant("best checkpoint moves on a tie", "helpers.py",
           "if valid_accuracy > max(history.valid_accuracy[:-1]",
           "if valid_accuracy >= max(history.valid_accuracy[:-1]", LOOP),
    Mutant("plateau scheduler watches the accuracy", "helpers.py",
           "scheduler.step(valid_loss)                 # ReduceLROnPlateau",
           "scheduler.step(valid_accuracy)             # ReduceLROnPlateau", LOOP),
    Mutant("the runner's plateau schedule watches the accuracy", "machinery/engine.py",
           "schedule.step(valid_loss)", "schedule.step(valid_accuracy)", RESUME),
    Mutant("early stopping watches the training loss", "helpers.py",
           "early_stopping.step(valid_loss)", "early_stopping.step(train_loss)", LOOP),
    Mutant("TensorBoard steps from 0", "helpers.py",
           'writer.add_scalar("loss/valid", valid_loss, epoch)',
           'writer.add_scalar("loss/valid", valid_loss, epoch - 1)', ("tests/test_training.py",)),
    Mutant("the runner's TensorBoard steps from 0", "machinery/engine.py",
           "writer.add_scalar(tag, value, epoch)", "writer.add_scalar(tag, value, epoch - 1)",
           ("tests/test_tensorboard.py",)),
    # resume
    Mutant("resume forgets early stopping's counter", "machinery/resume.py",
           'vars(early_stopping).update(state["early_stopping"])', "pass", RESUME),
    Mutant("resume forgets the scheduler", "machinery/resume.py",
           'scheduler.load_state_dict(state["scheduler"])', "pass", RESUME),
    Mutant("resume forgets the optimizer", "machinery/resume.py",
           'optimizer.load_state_dict(state["optimizer"])', "pass", RESUME),
    Mutant("resume forgets the random generators", "machinery/resume.py",
           'set_rng_state(state["rng"], train_loader)', "pass", RESUME),
    Mutant("resume forgets the best accuracy so far", "machinery/resume.py", '    return history\n',
           '    return {**history, "valid_accuracy": [0.0] * len(history["valid_accuracy"])}\n',
           RESUME),
    Mutant("a stopped run resumes training", "machinery/engine.py",
           "last_epoch = history.epochs if history.stopped_early else recipe.epochs",
           "last_epoch = recipe.epochs", RESUME),
    Mutant("last checkpoint without early stopping's state", "machinery/resume.py",
           '"early_stopping": vars(early_stopping).copy() if early_stopping is not None else None,',
           '"early_stopping": None,', RESUME),
    Mutant("no progress bar inside an epoch", "helpers.py",
           'for images, labels in progress(loader, "train"):', "for images, labels in loader:",
           ("tests/test_cli.py",)),
    # checkpoints
    Mutant("checkpoint records the wrong network", "helpers.py",
           "checkpoint_payload(model, network_name(model), **about)",
           'checkpoint_payload(model, "original", **about)',
           CHECKPOINTS + ("tests/test_improvements.py",)),
    Mutant("loaded network left in train mode", "helpers.py",
           "load_weights(model, payload, path).to(device).eval()",
           "load_weights(model, payload, path).to(device)", CHECKPOINTS + PREDICT),
    Mutant("unsafe loading of pickled objects", "machinery/checkpoint_file.py", "weights_only=True",
           "weights_only=False", CHECKPOINTS),
    Mutant("no shape check before loading", "machinery/checkpoint_file.py", "    if problems:\n",
           "    if False:\n", CHECKPOINTS),
    # prediction and evaluation
    Mutant("predict in train mode", "helpers.py", "    model.eval()\n    probabilities",
           "    model.train()\n    probabilities", PREDICT),
    Mutant("predict: argmax over the batch", "helpers.py",
           "return probabilities.argmax(dim=1), probabilities",
           "return probabilities.argmax(dim=0), probabilities", PREDICT),
    Mutant("confusion matrix transposed", "helpers.py",
           "torch.bincount(labels * num_classes + predictions",
           "torch.bincount(predictions * num_classes + labels", PREDICT),
    Mutant("most_confused counts the diagonal", "helpers.py", "matrix.clone().fill_diagonal_(0)",
           "matrix.clone()", PREDICT),
    Mutant("uint8 images not scaled to 0-1", "machinery/photos.py", "images = images.float() / 255",
           "images = images.float()", PREDICT),
    # photo preprocessing
    Mutant("photo never inverted", "machinery/photos.py", "if border.mean() > 0.5:",
           "if border.mean() > 1.5:", PREDICT),
    Mutant("photo background floor from the darkest border", "machinery/photos.py",
           "np.percentile(border, 90)", "np.percentile(border, 0)", PREDICT),
    Mutant("photo not cropped to the garment", "machinery/photos.py",
           "garment = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]", "garment = gray",
           PREDICT),
    Mutant("photo rotation metadata ignored", "machinery/photos.py",
           "img = ImageOps.exif_transpose(img)", "pass", PREDICT),
    Mutant("16-bit photo clipped to white", "machinery/photos.py",
           'img = eight_bit(img).convert("RGBA")', 'img = img.convert("RGBA")', PREDICT),
    Mutant("transparent pixels become black", "machinery/photos.py",
           'Image.new("RGBA", img.size, "white")', 'Image.new("RGBA", img.size, "black")', PREDICT),
    Mutant("float 0-1 photo read as 0-255", "machinery/photos.py",
           '((1.0,) if mode == "F" else ())', "()", ("tests/test_photos.py",)),
    Mutant("32-bit photo range clipped at 16 bits", "machinery/photos.py",
           "return 0.0, max(high, 1.0)", "return 0.0, 65535.0", ("tests/test_photos.py",)),
    Mutant("white cut-out drawn on white", "machinery/photos.py", "    if light_cutout(img):",
           "    if False:", ("tests/test_photos.py",)),
    Mutant("NaN pixels of a float photo opaque", "machinery/photos.py",
           "Image.fromarray(np.uint8(measured) * 255)",
           "Image.fromarray(np.uint8(measured | True) * 255)", ("tests/test_photos.py",)),
    # Colab
    Mutant("notebooks 7-9 mount Drive but never look on it", "machinery/colab.py",
           "folders.insert(0, mount_drive())", "mount_drive()", ("tests/test_colab.py",)),
    Mutant("setup cell fetches the moving branch", "machinery/tools/notebooks.py",
           "-b {version} {repository}", "-b main {repository}", ("tests/test_notebooks.py",)),
]

# Mutants that cannot change anything a test, a student or a checkpoint can observe, and why.
EQUIVALENT = {}

COPIED = ("helpers.py", "machinery", "tests", "pytest.ini", "reference", "notebooks", "images",
          "requirements.txt", "environment.yml", "README.md")


def course_copy(folder: Path) -> Path:
    """A copy of the course to mutate, sharing the prepared data folder."""
    folder.mkdir(parents=True)
    for name in COPIED:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name,
                            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        else:
            shutil.copy(source, folder / name)
    (folder / "data").symlink_to(DATA_ROOT, target_is_directory=True)
    git = ["git", "-c", "user.name=mutate", "-c", "user.email=mutate@localhost", "-C", str(folder)]
    for step in (["init", "--quiet"], ["add", "--all"],
                 ["commit", "--quiet", "-m", "the course, unmutated"]):
        # a checkout, as `archive` expects
        subprocess.run(git + step, check=True, capture_output=True)
    return folder


def run_tests(folder: Path, tests: tuple[str, ...], timeout: int = 600) -> bool:
    """True when the tests pass in `folder` (one process, one thread, stopping at the first
    failure)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("FMNIST_SMOKE", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-n", "0",
                             "-p", "no:cacheprovider", "-o", "addopts=", *tests],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    return result.returncode == 0


def mutate(only: list[str] | None = None, log=print) -> dict:
    """Put each mutant into a fresh copy of the course and run its tests; returns the score."""
    from ..dataset import prepare_data
    prepare_data()  # the copies share the data folder: fill it once, here
    chosen = [m for m in MUTANTS
              if not only or any(word.lower() in m.name.lower() for word in only)]
    results = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        pristine = course_copy(Path(tmp) / "course")
        if not run_tests(pristine, tuple(sorted({t for m in chosen for t in m.tests}))):
            raise RuntimeError("the selected tests fail without any mutation: fix them first")
        for mutant in chosen:
            path = pristine / mutant.path
            text = path.read_text()
            if text.count(mutant.original) != 1:
                raise ValueError(f"mutant {mutant.name!r}: {mutant.original!r} "
                                 f"is not in {mutant.path} exactly once")
            start = time.perf_counter()
            try:
                path.write_text(text.replace(mutant.original, mutant.mutated))
                caught = not run_tests(pristine, mutant.tests)
            finally:
                path.write_text(text)
            results.append({"mutant": mutant.name, "caught": caught,
                            "seconds": round(time.perf_counter() - start, 1)})
            log(f"{'caught  ' if caught else 'SURVIVED'}  {mutant.name}  "
                f"({results[-1]['seconds']} s)")
    scored = [r for r in results if r["mutant"] not in EQUIVALENT]
    caught = sum(r["caught"] for r in scored)
    return {"mutants": len(results), "equivalent": len(results) - len(scored), "caught": caught,
            "score": round(caught / len(scored), 3) if scored else None,
            "survivors": [r["mutant"] for r in scored if not r["caught"]]}
