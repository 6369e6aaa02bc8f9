"""Instructor tooling for the course notebooks (students never need this file).

    python course_tools.py sync      # rewrite every notebook's badge and setup cell from the template
    python course_tools.py lint      # list what would fail the notebook lint test
    python course_tools.py execute   # re-run every notebook in place in full mode (before a term)
    python course_tools.py bench [--json]  # training images/s: original recipe vs fast path
    python course_tools.py sprint    # GPU: the fp16 path (a T4's) and the improved network's time to 93% on short schedules
    python course_tools.py loadcheck # memory while evaluating and predicting thousands of times
    python course_tools.py images    # draw the sprite, the architecture diagram and the sample photo in images/
    python course_tools.py reference CHECKPOINT MINUTES "COMMAND" [NAME]  # ship reference/NAME.pt
    python course_tools.py trial RECIPE [KEY=VALUE ...] [--smoke] [--out DIR]  # a recipe variant, judged on validation only

The course repository's address lives here, in REPO_URL, and nowhere else: `sync` stamps it into
the Colab badge and the setup cell of every notebook.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
NOTEBOOKS = REPO_ROOT / "notebooks"
REPO_URL = "https://github.com/fmnist-course/fashion-mnist-cnn"  # the one place it is written
REPO_REF = "main"  # the branch or tag these notebooks belong to: Colab fetches helpers.py from it
NAME_PATTERN = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")

SETUP_CELL = f'''\
# Setup: make the course's helpers.py importable, in Colab and in Jupyter alike.
import os, subprocess, sys, time
from pathlib import Path

notebook_start = time.perf_counter()
COURSE_REPO = os.environ.get("FMNIST_COURSE_REPO", "{REPO_URL}.git")
COURSE_REF = "{REPO_REF}"  # the version of the course this notebook belongs to

def find_course_root():
    return next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "helpers.py").is_file()), None)

if find_course_root() is None and "google.colab" in sys.modules:
    # Colab opens a notebook on its own: fetch the course next to it, at the matching version.
    # torch, torchvision, tensorboard and numpy are already installed there, so nothing is reinstalled.
    if not Path("fashion-mnist-cnn").is_dir():
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", COURSE_REF,
                        COURSE_REPO, "fashion-mnist-cnn"], check=True)
    os.chdir("fashion-mnist-cnn/notebooks")
COURSE_ROOT = find_course_root()
if COURSE_ROOT is None:
    raise RuntimeError("helpers.py not found: open this notebook from the course's notebooks/ folder")
sys.path.insert(0, str(COURSE_ROOT))'''


def colab_url(notebook: Path) -> str:
    """The Open-in-Colab address of a notebook in the course repository."""
    path = notebook.resolve().relative_to(REPO_ROOT).as_posix()
    return f"https://colab.research.google.com/github/{REPO_URL.removeprefix('https://github.com/')}/blob/{REPO_REF}/{path}"


def badge(notebook: Path) -> str:
    """The markdown line with the Open-in-Colab badge."""
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook)})")


def notebook_paths() -> list[Path]:
    """The course notebooks, in order."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def sync(path: Path) -> bool:
    """Stamp the current badge and setup cell into one notebook; True if it changed."""
    nb = json.loads(path.read_text())
    title_cell, setup = nb["cells"][0], nb["cells"][1]
    lines = [line for line in source(title_cell).splitlines() if "colab-badge.svg" not in line]
    while len(lines) > 1 and not lines[1].strip():
        del lines[1]
    new_title = "\n".join([lines[0], "", badge(path), "", *lines[1:]])  # badge under the title
    changed = source(title_cell) != new_title or source(setup) != SETUP_CELL
    title_cell["source"], setup["source"] = new_title, SETUP_CELL
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(/(home|root|work|tmp|Users|content/drive)/|[A-Z]:\\\\)")
DRIVE_MOUNT = '"/content/drive'  # Colab's Google Drive mount point: fine in code, never in an output


def lint(path: Path) -> list[str]:
    """What is wrong with a committed notebook (an empty list when nothing is)."""
    problems = []
    if not NAME_PATTERN.match(path.name):
        problems.append("name is not NN_words.ipynb")
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != "python3":
        problems.append("kernelspec is not python3")
    if len(cells) < 2 or cells[0]["cell_type"] != "markdown" or badge(path) not in source(cells[0]):
        problems.append("first cell is not the title with this notebook's Open-in-Colab badge")
    if len(cells) < 2 or cells[1]["cell_type"] != "code" or source(cells[1]) != SETUP_CELL:
        problems.append("second cell is not the setup cell (run: python course_tools.py sync)")
    code = [c for c in cells if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    if counts != list(range(1, len(code) + 1)):
        problems.append(f"execution counts are not 1..{len(code)} in order: re-run top to bottom")
    for i, cell in enumerate(cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i} holds an error output")
        text = source(cell).replace(DRIVE_MOUNT, '"') + json.dumps([o for o in cell.get("outputs", []) if "text" in o or "data" in o
                                          and "text/plain" in o["data"]])
        if ABSOLUTE_PATH.search(text.replace(REPO_URL, "")):
            problems.append(f"cell {i} holds an absolute local path")
    return problems


def execute(paths: list[Path]) -> None:
    """Re-run notebooks top to bottom in place, in full mode, in the notebooks' folder."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "FMNIST_SMOKE"}
    # %tensorboard looks for the `tensorboard` program on PATH: the one beside this Python
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for path in paths:
        print(f"executing {path.name} ...", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                            "--inplace", "--ExecutePreprocessor.timeout=-1", str(path)], check=True, env=env)
        finally:
            stop_tensorboard_servers()


def stop_tensorboard_servers() -> None:
    """Stop the TensorBoard servers a notebook's %tensorboard cell started (they outlive the kernel)."""
    import os
    import signal
    from tensorboard import manager
    runs = str(REPO_ROOT / "runs")
    for info in manager.get_all():
        if runs in info.logdir:
            try:
                os.kill(info.pid, signal.SIGTERM)
                print(f"stopped TensorBoard server {info.pid} (port {info.port})")
            except ProcessLookupError:
                pass


IMAGES = REPO_ROOT / "images"


def make_sprite(path: Path = IMAGES / "fashion-mnist-sprite.png", per_class: int = 16) -> Path:
    """A grid of real test images: one row per class, labelled (shown at the top of the notebooks)."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from torchvision import datasets
    import helpers
    test = datasets.FashionMNIST(helpers.prepare_data(), train=False, download=False)
    rows = []
    for label in range(10):
        indices = (test.targets == label).nonzero().flatten()[:per_class]
        rows.append(np.hstack([test.data[i].numpy() for i in indices]))
    fig, ax = plt.subplots(figsize=(per_class * 0.6 + 1.6, 10 * 0.6))
    ax.imshow(255 - np.vstack(rows), cmap="gray")  # dark garments on white read better on a page
    ax.set_yticks([28 * i + 14 for i in range(10)], helpers.CLASSES)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_sample_photo(path: Path = IMAGES / "sample-photo.jpg", index: int = 0) -> Path:
    """A photo-like JPEG for stage 7 (no real photo is needed offline): a real test image, enlarged,
    as a dark-blue garment on a light, uneven, noisy background, off-centre, like a phone picture."""
    import numpy as np
    from PIL import Image, ImageFilter
    from torchvision import datasets
    import helpers
    test = datasets.FashionMNIST(helpers.prepare_data(), train=False, download=False)
    garment = Image.fromarray(test.data[index].numpy()).resize((336, 336), Image.Resampling.BICUBIC)
    ink = np.asarray(garment.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)[..., None] / 255
    height, width = 480, 640
    rng = np.random.default_rng(0)
    shade = np.linspace(0.95, 0.80, width)[None, :, None] * np.linspace(1.0, 0.92, height)[:, None, None]
    background = np.clip(shade * np.array([236, 230, 222]) + rng.normal(0, 4, (height, width, 3)), 0, 255)
    top, left = 70, 190
    window = background[top:top + 336, left:left + 336]
    background[top:top + 336, left:left + 336] = (1 - ink) * window + ink * np.array([38, 52, 96])
    Image.fromarray(np.uint8(background)).save(path, quality=88)
    return path


def make_architecture_diagram(path: Path = IMAGES / "architecture.png") -> Path:
    """The original CNN as boxes with output shapes and parameter counts, computed from the model."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch
    import helpers
    model = helpers.FMnistCNN()

    def params(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    boxes = [
        ("input", "1 x 28 x 28", "image", 0, "#dddddd"),
        ("conv_block1", "32 x 14 x 14", "Conv 3x3 (32)\nBatchNorm\nReLU\nMaxPool 2", params(model.conv_block1), "#9ecae1"),
        ("conv_block2", "64 x 7 x 7", "Conv 3x3 (64)\nBatchNorm\nDropout 0.2\nReLU\nMaxPool 2", params(model.conv_block2), "#6baed6"),
        ("conv_block3", "128 x 3 x 3", "Conv 3x3 (128)\nBatchNorm\nDropout 0.4\nReLU\nMaxPool 2", params(model.conv_block3), "#4292c6"),
        ("flatten", "1152", "x.flatten(1)", 0, "#dddddd"),
        ("linear1, batch_norm", "128", "Linear 1152->128\nBatchNorm1d\nDropout 0.5\nReLU", params(model.linear1, model.batch_norm), "#fdae6b"),
        ("linear2", "10 logits", "Linear 128->10", params(model.linear2), "#e6550d"),
    ]
    fig, ax = plt.subplots(figsize=(15, 4.2))
    width, gap = 1.75, 0.45
    for i, (name, shape, body, count, colour) in enumerate(boxes):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0.2), width, 2.6, boxstyle="round,pad=0.05", fc=colour, ec="black"))
        ax.text(x + width / 2, 2.55, name, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x + width / 2, 1.55, body, ha="center", va="center", fontsize=9)
        ax.text(x + width / 2, 0.45, f"{count:,} params" if count else "no params", ha="center", fontsize=8.5)
        ax.text(x + width / 2, 3.1, shape, ha="center", fontsize=10, color="#333333")
        if i:
            ax.annotate("", xy=(x - 0.03, 1.5), xytext=(x - gap + 0.03, 1.5),
                        arrowprops=dict(arrowstyle="->", lw=1.5))
    total = helpers.count_parameters(model)
    ax.set_title(f"FMnistCNN: {total:,} parameters (output shape above each box)", fontsize=12)
    ax.set_xlim(-0.2, len(boxes) * (width + gap))
    ax.set_ylim(0, 3.5)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_reference(checkpoint: Path, command: str, minutes: float, name: str | None = None) -> Path:
    """Copy a trained checkpoint to reference/NAME.pt (NAME: the network's) with its test figures
    and how it was made; the training state of a last checkpoint is left out."""
    import torch
    import helpers
    device = torch.device("cpu")
    model, meta = helpers.load_checkpoint(checkpoint, device)
    _, _, test_set = helpers.load_datasets(helpers.course_settings(smoke=False))
    test_loss, test_accuracy = helpers.evaluate(model, helpers.make_loader(test_set, 1000), torch.nn.CrossEntropyLoss(), device)
    reference = {"test_accuracy": test_accuracy, "test_loss": test_loss, "command": command,
                 "machine": helpers.machine(), "training_minutes": round(minutes, 1)}
    settings = helpers.Settings(**meta["settings"]) if meta.get("settings") else None
    path = helpers.REFERENCE / f"{name or meta['model']}.pt"
    helpers.save_checkpoint(path, model, epoch=meta.get("epoch"), metrics=meta.get("metrics"),
                            settings=settings, extra={"reference": reference})
    print(f"wrote {path.relative_to(REPO_ROOT)}: test accuracy {test_accuracy:.2%}, loss {test_loss:.4f}")
    return path


def parse_overrides(pairs: list[str]) -> dict:
    """Settings changes written KEY=VALUE: values read as JSON (25, 0.1, true), otherwise as text (adamw)."""
    import dataclasses
    import helpers
    known = [f.name for f in dataclasses.fields(helpers.Settings)]
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(f"{pair!r} is not KEY=VALUE with KEY one of the settings: {', '.join(known)}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def trial(recipe: str, overrides: dict, smoke: bool | None = None, out: Path | None = None) -> dict:
    """Train a recipe with some settings changed; report validation figures only.

    This is how the course's recipes were chosen: the test set is never evaluated here, so a
    choice made from these figures cannot overfit it. The run's TensorBoard log goes to
    runs/trial-..., its best and last checkpoints to checkpoints/trial-... (resumable with
    `python helpers.py train --resume`; shippable with `reference` once RECIPES adopts it);
    out=DIR puts both under DIR instead.
    """
    import helpers
    if overrides.get("final_fit"):
        raise ValueError("a trial is judged on the validation images, and a final fit trains on them: "
                         "choose the recipe with trials, then train it with python helpers.py train --final-fit")
    settings = helpers.course_settings(smoke=smoke, recipe=recipe, **overrides)
    name = "-".join(["trial", recipe, *(f"{key}{value}" for key, value in overrides.items())])
    best_path, last_path = helpers.checkpoint_paths(settings, out or helpers.CHECKPOINTS, name)  # smoke: -smoke
    train_set, valid_set, _ = helpers.load_datasets(settings)
    _, history, minutes = helpers.train_run(settings, train_set, valid_set, helpers.pick_device(),
                                            run_dir=(out / "runs" if out else helpers.RUNS_ROOT) / best_path.stem,
                                            best_path=best_path, last_path=last_path)
    return {"recipe": recipe, "overrides": overrides, "epochs": history.epochs,
            "valid_accuracy_last": history.valid_accuracy[-1], "valid_accuracy_best": max(history.valid_accuracy),
            "minutes": round(minutes, 1), "last_checkpoint": str(last_path), "machine": helpers.machine()}


def load_check(calls: int = 5000, evaluations: int = 5) -> dict:
    """Evaluate the full test set and predict single images thousands of times; report memory."""
    import resource
    import torch
    import helpers

    def resident_mb() -> float:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(status["VmRSS"].split()[0]) / 1024

    device = torch.device("cpu")
    model, _ = helpers.load_checkpoint(helpers.course_checkpoint("original"), device)
    _, _, test_set = helpers.load_datasets(helpers.course_settings(smoke=False))
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


def images_per_second(model, loader, device, precision=None) -> float:
    """Training throughput of one pass over `loader`, after a few untimed warm-up steps."""
    import itertools
    import time
    import torch
    import helpers
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    helpers.train_one_epoch(model, itertools.islice(loader, 3), loss_fn, optimizer, device, precision)
    start = time.perf_counter()
    helpers.train_one_epoch(model, loader, loss_fn, optimizer, device, precision)  # ends with .item(): synced
    return len(loader.dataset) / (time.perf_counter() - start)


def bench(images: int = 8192, rounds: int = 3, compiled: bool | None = None) -> dict:
    """Training images per second of the original recipe and of the fast path, side by side.

    (a) the original recipe: batch 16 through a DataLoader that applies ToTensor image by image;
    (b) the fast path: the uint8 data on the device (DeviceLoader), channels-last, a batch of 256
        on a CPU or 1,024 on a GPU, mixed precision chosen by the GPU's compute capability.
    The two alternate `rounds` times and the median of each is reported, so background load
    touches both alike. compiled (default: on a GPU) adds (b') the fast path with the network
    compiled (helpers.compile_model: CUDA graphs on a GPU), timed after its compilation.
    On a GPU, also (c) the wall time of the improved recipe to 93% test accuracy.
    """
    import statistics
    import torch
    import helpers
    device = helpers.pick_device()
    train_set, valid_set, test_set = helpers.load_datasets(helpers.course_settings(smoke=False))
    subset = helpers.first(train_set, images)
    precision = helpers.mixed_precision(device)
    fast_batch = 1024 if device.type == "cuda" else 256
    fast_loader = helpers.DeviceLoader(subset, fast_batch, shuffle=True, device=device, channels_last=True)
    original, fast = [], []
    for round_ in range(rounds):
        torch.manual_seed(round_)
        model = helpers.build_model("original").to(device)
        original.append(images_per_second(model, helpers.make_loader(subset, 16, shuffle=True, device=device), device))
        model = helpers.build_model("original").to(device, memory_format=torch.channels_last)
        fast.append(images_per_second(model, fast_loader, device, precision))
    compiled_rate = None
    if compiled or (compiled is None and device.type == "cuda"):
        model = helpers.compile_model(helpers.build_model("original").to(device, memory_format=torch.channels_last), device)
        images_per_second(model, fast_loader, device, precision)  # the first pass pays for compiling
        compiled_rate = statistics.median(images_per_second(model, fast_loader, device, precision) for _ in range(rounds))
    a, b = statistics.median(original), statistics.median(fast)
    report = {"machine": helpers.machine(), "device": str(device), "images_per_round": images, "rounds": rounds,
              "original_recipe_images_per_s": round(a), "fast_path_images_per_s": round(b),
              "fast_path_batch": fast_batch, "precision": str(precision).replace("torch.", "") if precision else "float32",
              "ratio": round(b / a, 2)}
    if compiled_rate:
        report.update(fast_path_compiled_images_per_s=round(compiled_rate), compiled_ratio=round(compiled_rate / a, 2))
    if device.type == "cuda":  # on a CPU this would take the better part of an hour
        report["improved_to_93"] = time_to_accuracy(helpers.course_settings(smoke=False, recipe="improved"),
                                                    train_set, valid_set, test_set, device)
    return report


def seeded_run(settings, train_set, valid_set, test_set, device) -> tuple:
    """A recipe's seeded start: train and test loaders, a fresh network, optimizer, scheduler, loss."""
    import helpers
    generator = helpers.seed_everything(settings.seed)
    train_loader, _, test_loader = helpers.make_run_loaders(settings, train_set, valid_set, test_set, generator, device)
    return (train_loader, test_loader, *helpers.make_training(settings, device, len(train_loader)))


def time_to_accuracy(settings, train_set, valid_set, test_set, device, target: float = 0.93) -> dict:
    """Wall time of a recipe until its test accuracy, checked after every epoch, first reaches `target`.

    The clock includes the per-epoch test evaluations (you must look to know you are there) and
    starts after one untimed warm-up step, which pays for CUDA's and cuDNN's start-up.
    """
    import time
    import torch
    import helpers
    train_loader, test_loader, model, optimizer, scheduler, loss_fn = seeded_run(settings, train_set, valid_set,
                                                                                 test_set, device)
    precision = helpers.mixed_precision(device)
    warm_up = helpers.build_model(settings.model).to(device, memory_format=torch.channels_last)
    batch = (torch.rand(settings.batch_size, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last),
             torch.randint(0, 10, (settings.batch_size,), device=device))  # leaves the seeded generator alone
    helpers.train_one_epoch(warm_up, [batch], loss_fn, torch.optim.SGD(warm_up.parameters(), lr=0.0), device, precision)
    scaler = helpers.make_scaler(device, precision)  # one per run, as fit makes it
    start = time.perf_counter()
    accuracy = 0.0
    for epoch in range(1, settings.epochs + 1):
        helpers.train_one_epoch(model, train_loader, loss_fn, optimizer, device, precision, scheduler, scaler)
        _, accuracy = helpers.evaluate(model, test_loader, torch.nn.CrossEntropyLoss(), device)
        if accuracy >= target:
            break
    return {"target": target, "reached": accuracy >= target, "epochs": epoch, "test_accuracy": round(accuracy, 4),
            "seconds": round(time.perf_counter() - start, 2), "model": settings.model}


def short_run(settings, precision, data, device, epochs: int = 2) -> dict:
    """A few epochs of a recipe at a forced precision: last training loss, test accuracy, seconds."""
    import time
    import torch
    import helpers
    train_loader, test_loader, model, optimizer, scheduler, loss_fn = seeded_run(settings, *data, device)
    scaler = helpers.make_scaler(device, precision)  # one per run, as fit makes it
    start = time.perf_counter()
    for _ in range(epochs):
        loss = helpers.train_one_epoch(model, train_loader, loss_fn, optimizer, device, precision, scheduler, scaler)
    seconds = time.perf_counter() - start
    accuracy = helpers.evaluate(model, test_loader, torch.nn.CrossEntropyLoss(), device)[1]
    return {"label": f"{settings.model}, {epochs} of {settings.epochs} epochs, {precision}",
            "train_loss": round(loss, 4), "test_accuracy": round(accuracy, 4), "seconds": round(seconds, 2)}


def sprint():
    """GPU measurements beyond bench, one JSON line each as they finish.

    First the improved recipe for two epochs in fp16 with a gradient scaler (what a T4 runs), bf16
    and fp32, to show the fp16 path trains as well. Then the improved network's wall time to 93%
    test accuracy (time_to_accuracy) on shorter one-cycle schedules, eager and compiled; the first
    compiled run pays for compiling, the later ones find the compiled kernels cached.
    """
    from dataclasses import replace
    import time
    import torch
    import helpers
    device = helpers.pick_device()
    data = helpers.load_datasets(helpers.course_settings(smoke=False))
    improved = helpers.course_settings(smoke=False, recipe="improved")
    for precision in (torch.float16, torch.bfloat16, None):
        yield short_run(improved, precision, data, device)
    for label, settings in [("improved, 12-epoch one-cycle", replace(improved, epochs=12)),
                            ("improved, compiled (cold)", replace(improved, compile=True)),
                            ("improved, 12-epoch one-cycle, compiled (warm cache)", replace(improved, epochs=12, compile=True)),
                            ("improved, 8-epoch one-cycle, compiled (warm cache)", replace(improved, epochs=8, compile=True))]:
        start = time.perf_counter()
        result = time_to_accuracy(settings, *data, device)
        yield dict(label=label, **result, call_seconds=round(time.perf_counter() - start, 1))


def main(argv: list[str]) -> int:
    command, names = (argv[0] if argv else "lint"), argv[1:]
    paths = [NOTEBOOKS / n for n in names] if names else notebook_paths()
    if command == "sync":
        for path in paths:
            print(f"{path.name}: {'updated' if sync(path) else 'up to date'}")
    elif command == "lint":
        bad = {p.name: lint(p) for p in paths if lint(p)}
        for name, problems in bad.items():
            print(f"{name}: " + "; ".join(problems))
        return 1 if bad else 0
    elif command == "execute":
        execute(paths)
    elif command == "reference":  # reference CHECKPOINT MINUTES "COMMAND THAT TRAINED IT"
        make_reference(Path(names[0]), command=names[2], minutes=float(names[1]),
                       name=names[3] if len(names) > 3 else None)
    elif command == "bench":  # also: python helpers.py bench [--json]
        result = bench(compiled=True if "--compile" in names else None)
        print(json.dumps(result) if "--json" in names else
              f"original recipe {result['original_recipe_images_per_s']:,} images/s, fast path "
              f"{result['fast_path_images_per_s']:,} images/s: {result['ratio']}x on {result['machine']}"
              + (f"; compiled fast path {result['fast_path_compiled_images_per_s']:,} images/s: "
                 f"{result['compiled_ratio']}x" if "compiled_ratio" in result else ""))
    elif command == "trial" and names:
        parser = argparse.ArgumentParser(prog="course_tools.py trial")
        parser.add_argument("recipe")
        parser.add_argument("changes", nargs="*", metavar="KEY=VALUE")
        parser.add_argument("--smoke", action="store_true", help="a few thousand images, 2 epochs")
        parser.add_argument("--out", type=Path, help="checkpoints and runs under this folder")
        args = parser.parse_args(names)
        print(json.dumps(trial(args.recipe, parse_overrides(args.changes), smoke=args.smoke or None, out=args.out)))
    elif command == "sprint":  # meant for a GPU: on a CPU it takes hours
        for result in sprint():
            print(json.dumps(result), flush=True)
    elif command == "loadcheck":  # memory of 5 full test evaluations and 5,000 single predictions
        print(json.dumps(load_check()))
    elif command == "images":
        for path in (make_sprite(), make_architecture_diagram(), make_sample_photo()):
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
