"""TensorBoard: the events hold what the runner logged -- every panel, read back with
TensorBoard's own reader and checked against the network and images it came from -- a real
server serves them, a real browser shows each tab."""
import io
import itertools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

import helpers
from machinery import tensorboard_panels
from machinery.basics import CLASSES
from machinery.fast_path import dataset_tensors
from machinery.figures import plot_mistakes
from test_training import small_run

TAGS = ("loss/train", "loss/valid", "accuracy/valid", "learning_rate")
EPOCHS = 3


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, small_sets, small_recipe):
    """A short real training run logged to a fresh runs folder: (runs folder, run name, history,
    the trained network, its best checkpoint)."""
    runs = tmp_path_factory.mktemp("runs")
    run_dir = runs / "original-smoke-test"
    best = tmp_path_factory.mktemp("checkpoints") / "best.pt"
    with SummaryWriter(run_dir) as writer:
        model, history, _ = small_run(small_sets, small_recipe, runs, epochs=EPOCHS,
                                      writer=writer, best_path=best)
    return runs, run_dir.name, history, model, best


# One test reads the whole run: mutmut credits the code a module-scoped fixture runs to the first
# test that uses it, and runs only that test against a mutant of that code.
def test_a_run_logs_every_panel_in_one_folder(logged_run, small_sets, small_recipe):
    runs, name, history, model, best = logged_run
    scalars = helpers.read_scalars(runs / name)
    for tag in TAGS:  # one value per epoch, step = epoch
        steps, _ = scalars[tag]
        assert steps == list(range(1, EPOCHS + 1)), tag
    for tag, figures in (("loss/train", history.train_loss), ("loss/valid", history.valid_loss),
                         ("accuracy/valid", history.valid_accuracy), ("learning_rate", history.lr)):
        assert scalars[tag][1] == pytest.approx(figures, rel=1e-6), tag  # its own figures
    assert scalars["hparam/best_valid_accuracy"][1] == pytest.approx([max(history.valid_accuracy)])
    assert scalars["hparam/final_valid_loss"][1] == pytest.approx([history.valid_loss[-1]])
    assert scalars["hparam/epochs"] == ([EPOCHS], [EPOCHS])

    assert [p.name for p in runs.iterdir()] == [name]  # no stray runs from add_scalars/add_hparams
    # one event file; the projector's files in a folder of their own (no events: no second run)
    assert len(list((runs / name).rglob("events.out.tfevents.*"))) == 1
    assert [p.name for p in (runs / name).iterdir() if p.is_dir()] == [f"{history.best_epoch:05}"]
    events = EventAccumulator(str(runs / name), size_guidance={"histograms": 0, "tensors": 0})
    events.Reload()
    # the best epoch's confusion matrix and mistakes: the Images tab's slider shows which epoch
    for tag in ("valid/confusion_matrix", "valid/mistakes"):
        assert [image.step for image in events.Images(tag)] == [history.best_epoch], tag
    # HParams: every setting the recipe sets, with its value
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    recipe = replace(small_recipe, epochs=EPOCHS).as_dict()
    assert set(start.hparams) == {name for name, value in recipe.items() if value is not None}
    assert start.hparams["batch_size"].number_value == recipe["batch_size"]
    assert start.hparams["optimizer"].string_value == recipe["optimizer"]
    layout = events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    assert b"loss/train" in layout and b"loss/valid" in layout  # one chart with both losses

    valid_images, valid_labels = dataset_tensors(small_sets[1])
    check_graph_and_data_grid(events, valid_images)
    check_histograms(events, model)
    best_model = helpers.load_checkpoint(best)[0]
    assert helpers.load_checkpoint(best)[1]["epoch"] == history.best_epoch
    check_pr_curves(events, best_model, small_sets[1], valid_labels, history.best_epoch)
    check_projector(runs / name, best_model, small_sets[1], valid_labels, history.best_epoch)


def check_graph_and_data_grid(events: EventAccumulator, valid_images: torch.Tensor) -> None:
    """Graphs: the network's layers by name; Images: the first validation images, in order."""
    nodes = {node.name for node in events.Graph().node}
    for layer in ("Sequential[conv_block1]/Conv2d[0]", "Sequential[conv_block3]/Conv2d[0]",
                  "Linear[linear1]", "Linear[linear2]"):
        assert any(f"FMnistCNN/{layer}/" in node for node in nodes), layer
    [grid] = events.Images("data/validation_images")
    png = Image.open(io.BytesIO(grid.encoded_image_string)).convert("L")
    expected = make_grid(valid_images[:64, None].float() / 255, nrow=16)[0]
    assert (grid.step, png.size) == (0, (expected.shape[1], expected.shape[0]))
    assert (torch.from_numpy(np.array(png)) - expected * 255).abs().max() <= 1  # 8-bit levels


def check_histograms(events: EventAccumulator, model: nn.Module) -> None:
    """Histograms: every parameter's weights and gradient, every epoch; the last epoch's weights
    are the trained network's."""
    for name, parameter in model.named_parameters():
        for kind in ("weights", "gradients"):
            series = events.Histograms(f"{kind}/{name}")
            assert [h.step for h in series] == list(range(1, EPOCHS + 1)), (kind, name)
            assert {h.histogram_value.num for h in series} == {parameter.numel()}
        for kind, logged in (("weights", parameter), ("gradients", parameter.grad)):
            last = events.Histograms(f"{kind}/{name}")[-1].histogram_value  # the last step's
            assert (last.min, last.max) == pytest.approx((logged.min().item(),
                                                          logged.max().item()), abs=1e-6)


def penultimate_and_probabilities(model: nn.Module, valid_set) -> tuple:
    """The input of the network's last layer and its class probabilities, for every image."""
    images = torch.stack([image for image, _ in valid_set])
    features = []
    hook = model.linear2.register_forward_hook(lambda m, inputs, out: features.append(inputs[0]))
    model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(model(images), dim=1)
    hook.remove()
    return features[0], probabilities


def check_pr_curves(events, best_model, valid_set, labels, best_epoch) -> None:
    """PR Curves: one per class, at the best epoch, of the best weights' probabilities."""
    _, probabilities = penultimate_and_probabilities(best_model, valid_set)
    thresholds = torch.arange(127).reshape(-1, 1)  # add_pr_curve's default: 127 thresholds
    for index, name in enumerate(CLASSES):
        [curve] = events.Tensors(f"pr_curve/{name}")
        assert curve.step == best_epoch
        true_positives, false_positives = tensor_util.make_ndarray(curve.tensor_proto)[:2]
        # each image counts at every threshold up to its probability's bucket
        above = (probabilities[:, index] * 126).floor() >= thresholds     # [127, images]
        positive = labels == index
        assert true_positives.tolist() == (above & positive).sum(dim=1).tolist(), name
        assert false_positives.tolist() == (above & ~positive).sum(dim=1).tolist(), name


def projector_tensor(folder: Path) -> torch.Tensor:
    """The vectors the projector shows, read from the tensors.tsv add_embedding wrote."""
    return torch.tensor([[float(value) for value in line.split("\t")]
                         for line in (folder / "tensors.tsv").read_text().splitlines()])


def check_projector(run_dir, best_model, valid_set, labels, best_epoch) -> None:
    """Projector: the best weights' penultimate layer, with the class names and images."""
    folder = run_dir / f"{best_epoch:05}" / "penultimate_layer"
    assert f'tensor_path: "{best_epoch:05}/penultimate_layer/tensors.tsv"' in (
        run_dir / "projector_config.pbtxt").read_text()
    features, _ = penultimate_and_probabilities(best_model, valid_set)
    logged = projector_tensor(folder)
    assert logged.shape == features.shape == (len(valid_set), 128)
    assert torch.allclose(logged, features, atol=1e-4)
    names = (folder / "metadata.tsv").read_text().splitlines()
    assert names == [CLASSES[label] for label in labels]
    side = 28 * math.ceil(math.sqrt(len(valid_set)))
    assert Image.open(folder / "sprite.png").size == (side, side)


class Favourite(nn.Module):
    """Always predicts class `favourite`; its last layer's input is the image's pixels."""

    def __init__(self, favourite: int) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(torch.eye(10)[favourite] * 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_logging_every_panel_leaves_the_training_as_it_was(small_sets, small_recipe, tmp_path):
    """The panels draw no random number: a logged run's weights equal an unlogged run's."""
    with SummaryWriter(tmp_path / "run") as writer:
        logged = small_run(small_sets, small_recipe, tmp_path, epochs=2, writer=writer)[0]
    unlogged = small_run(small_sets, small_recipe, tmp_path, epochs=2)[0]
    for (name, a), b in zip(logged.state_dict().items(), unlogged.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_summary_reads_the_network_in_eval_mode(small_sets):
    # e.g. a finished run resumed with nothing left to train: a fresh network, in train mode
    torch.manual_seed(0)
    model = helpers.build_model("original").train()
    loader = helpers.make_loader(small_sets[1], 100)
    outputs = tensorboard_panels.validation_outputs(model, loader, torch.device("cpu"))
    with torch.no_grad():
        expected = torch.cat([model.eval()(images) for images, _ in loader])
    assert torch.equal(outputs["logits"], expected)  # BatchNorm's running statistics, no dropout


@pytest.mark.parametrize("best", [1, None], ids=["best weights", "no best weights"])
def test_the_summary_shows_the_best_weights_mistakes_and_features(best, small_sets, small_recipe,
                                                                   tmp_path, monkeypatch):
    valid_set = small_sets[1]
    images, labels = dataset_tensors(valid_set)
    images = images.float() / 255
    model = Favourite(0)  # the last epoch's weights; the best epoch's predict class 1
    history = helpers.History(best_epoch=2)
    for accuracy in (0.3, 0.5, 0.4):  # the best in the middle; losses 0.7, 0.5, 0.6
        history.record(train_loss=1.0, valid_loss=1.0 - accuracy, valid_accuracy=accuracy)
    mistakes = []
    monkeypatch.setattr(tensorboard_panels, "plot_mistakes",
                        lambda *shown: mistakes.append(shown) or plot_mistakes(*shown))
    monkeypatch.setattr(tensorboard_panels, "EMBEDDED", 100)
    best_weights = Favourite(best).state_dict() if best is not None else None
    with SummaryWriter(tmp_path) as writer:
        tensorboard_panels.log_run_summary(writer, model, helpers.make_loader(valid_set, 100),
                                           torch.device("cpu"), history, small_recipe,
                                           best_weights)
    assert model.linear.bias.argmax() == 0  # its own weights back
    predicted = 0 if best is None else best
    step = history.epochs if best is None else history.best_epoch
    [(shown_images, shown_labels, shown_predictions)] = mistakes
    wrong = labels != predicted
    assert torch.equal(shown_labels, labels[wrong]) and (shown_predictions == predicted).all()
    assert torch.equal(shown_images[:, 0], images[wrong])
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [image.step for image in events.Images("valid/mistakes")] == [step]
    for tag, value in (("hparam/best_valid_accuracy", 0.5), ("hparam/final_valid_loss", 0.6),
                       ("hparam/epochs", 3)):  # the HParams tab's results
        assert [s.value for s in events.Scalars(tag)] == [pytest.approx(value)], tag
    # the projector: the first EMBEDDED images, their pixels (the last layer's input) and names
    folder = tmp_path / f"{step:05}" / "penultimate_layer"
    logged = projector_tensor(folder)
    assert torch.allclose(logged, images[:100].flatten(1), atol=1e-6)
    names = (folder / "metadata.tsv").read_text().splitlines()
    assert names == [CLASSES[label] for label in labels[:100]]
    sprite = torch.from_numpy(np.array(Image.open(folder / "sprite.png").convert("L")))
    assert sprite.shape == (280, 280)  # 10 x 10 images: the first 100, row by row
    for index in (0, 1, 10, 99):
        row, column = divmod(index, 10)
        tile = sprite[28 * row:28 * (row + 1), 28 * column:28 * (column + 1)]
        assert (tile - images[index] * 255).abs().max() <= 1, index


def test_a_resumed_run_adds_epochs_and_summarises_the_best_checkpoint(small_sets, small_recipe,
                                                                     tmp_path, monkeypatch):
    run_dir, best, last = tmp_path / "run", tmp_path / "best.pt", tmp_path / "last.pt"
    real_train, real_evaluate = helpers.train_one_epoch, helpers.evaluate
    epochs = itertools.count(1)

    def train_until_stopped(*args):
        if next(epochs) == 3:
            raise KeyboardInterrupt  # Ctrl-C in epoch 3
        return real_train(*args)

    with monkeypatch.context() as patch, SummaryWriter(run_dir) as writer:
        patch.setattr(helpers, "train_one_epoch", train_until_stopped)
        history = small_run(small_sets, small_recipe, tmp_path, epochs=3, writer=writer,
                            best_path=best, last_path=last)[1]
    assert history.interrupted and not list(run_dir.glob("0000*"))  # no summary yet
    events = EventAccumulator(str(run_dir))
    events.Reload()  # the loss chart is there from the start, filled as the epochs come
    assert events.Tensors("custom_scalars__config__")
    best_epoch = helpers.load_checkpoint(best)[1]["epoch"]
    monkeypatch.setattr(helpers, "evaluate",  # epoch 3 is worse: the best weights stay on disk
                        lambda *args: (real_evaluate(*args)[0], 0.0))
    with SummaryWriter(run_dir) as writer:
        model, history, _ = small_run(small_sets, small_recipe, tmp_path, epochs=3,
                                      writer=writer, best_path=best, last_path=last, resume=last)
    assert (history.epochs, history.best_epoch) == (3, best_epoch)
    events = EventAccumulator(str(run_dir), size_guidance={"histograms": 0})
    events.Reload()
    assert len(events.Images("data/validation_images")) == 1  # logged when the run began
    assert [h.step for h in events.Histograms("weights/linear2.weight")] == [1, 2, 3]
    assert [image.step for image in events.Images("valid/mistakes")] == [best_epoch]
    features, _ = penultimate_and_probabilities(helpers.load_checkpoint(best)[0], small_sets[1])
    folder = run_dir / f"{best_epoch:05}" / "penultimate_layer"
    logged = projector_tensor(folder)
    assert torch.allclose(logged, features, atol=1e-4)


def test_plot_mistakes_captions_each_image_with_its_prediction_and_truth():
    images = torch.rand(40, 1, 28, 28)
    labels, predictions = torch.arange(40) % 10, (torch.arange(40) + 3) % 10
    fig = plot_mistakes(images, labels, predictions)
    [ax] = fig.axes
    captions = [text.get_text() for text in ax.texts]
    assert len(captions) == 32  # 4 rows of 8: the first mistakes
    assert captions[:2] == ["Dress\n(true: T-shirt/top)", "Coat\n(true: Trouser)"]
    canvas = ax.images[0].get_array()
    x, y = ax.texts[5].get_position()  # centred over its image, just above it
    top, left = round(y) + 1, round(x) - 14
    assert np.allclose(canvas[top:top + 28, left:left + 28], images[5, 0].numpy())


def test_plot_runs_draws_the_logged_curves(logged_run):
    runs, name, history, _, _ = logged_run
    fig = helpers.plot_runs(runs / name)
    lines = fig.axes[2].get_lines()
    assert ([round(y, 6) for y in lines[0].get_ydata()]
            == [round(a, 6) for a in history.valid_accuracy])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def tensorboard_server(logged_run):
    """A real TensorBoard server on a free loopback port, stopped afterwards."""
    runs, name, *_ = logged_run
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(runs), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if name in get_json(f"{base}/data/runs"):
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("TensorBoard did not serve the run: "
                            f"{server.stderr.read() if server.poll() is not None else 'timeout'}")
            time.sleep(0.5)
        yield base, name
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_server_data_api_serves_the_logged_values(tensorboard_server, logged_run):
    base, name = tensorboard_server
    history = logged_run[2]
    tags = get_json(f"{base}/data/plugin/scalars/tags")
    assert set(TAGS) <= set(tags[name])
    query = urllib.parse.urlencode({"run": name, "tag": "accuracy/valid"})
    series = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
    assert [step for _, step, _ in series] == list(range(1, EPOCHS + 1))
    assert [value for _, _, value in series] == pytest.approx(history.valid_accuracy, abs=1e-6)


def test_server_serves_every_panel(tensorboard_server, logged_run, small_sets):
    """What each tab asks the server for: its tags, the graph, the projector's tensor."""
    base, name = tensorboard_server
    model = logged_run[3]
    parameters = [name for name, _ in model.named_parameters()]
    assert set(get_json(f"{base}/data/plugin/images/tags")[name]) == {
        "data/validation_images", "valid/confusion_matrix", "valid/mistakes"}
    for plugin in ("histograms", "distributions"):
        assert set(get_json(f"{base}/data/plugin/{plugin}/tags")[name]) == {
            f"{kind}/{parameter}" for kind in ("weights", "gradients") for parameter in parameters}
    assert set(get_json(f"{base}/data/plugin/pr_curves/tags")[name]) == {
        f"pr_curve/{label}" for label in CLASSES}
    assert get_json(f"{base}/data/plugin/graphs/info")[name]["run_graph"]
    layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
    assert layout["category"][0]["chart"][0]["multiline"]["tag"] == ["loss/train", "loss/valid"]
    [embedding] = get_json(f"{base}/data/plugin/projector/info?run={name}")["embeddings"]
    assert embedding["tensorShape"] == [256, 128]
    query = urllib.parse.urlencode({"run": name, "name": embedding["tensorName"]})
    with urllib.request.urlopen(f"{base}/data/plugin/projector/tensor?{query}") as response:
        served = torch.frombuffer(bytearray(response.read()), dtype=torch.float32)
    features, _ = penultimate_and_probabilities(helpers.load_checkpoint(logged_run[4])[0],
                                                small_sets[1])
    assert torch.allclose(served.reshape(features.shape), features, atol=1e-4)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run must install Debian's chromium package")
        pytest.skip("no chromium here (sudo apt-get install chromium); CI runs this test")
    return path


# Each tab of the dashboard and what shows that it holds this run's panel: Playwright selectors,
# which see inside TensorBoard's shadow DOM and its SVG.
TABS = {"scalars": ["text=accuracy/valid", "text=learning_rate"],
        "custom_scalars": ["text=loss: train vs validation"],
        "images": ["text=data/validation_images", "text=valid/confusion_matrix",
                   "text=valid/mistakes"],
        "graphs": ['text.nodelabel:has-text("FMnistCNN")', "svg text:has-text('64×1×28×28')"],
        "distributions": ["text=gradients/batch_norm.bias"],
        "histograms": ["text=gradients/batch_norm.bias"],
        "pr_curves": ["text=pr_curve/Ankle boot", "text=pr_curve/T-shirt/top"],
        "hparams": ["text=batch_size", "text=label_smoothing"],
        # the projector draws in a frame of its own, which Playwright does not enter here: the
        # screenshot shows its points (the server test checks the 256 x 128 tensor it serves)
        "projector": ['iframe[src*="name=projector"]']}


def test_browser_renders_every_tab(tensorboard_server, tmp_path):
    """Debian's Chromium, driven by Playwright: each tab shows its panel, in a non-blank page."""
    from playwright.sync_api import sync_playwright
    base, name = tensorboard_server
    # The background-networking flags keep Chromium from calling out of this offline machine.
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
    screenshots = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for tab, selectors in TABS.items():
                page.goto(f"{base}/#{tab}")
                for selector in selectors:
                    page.locator(selector).filter(visible=True).first.wait_for(timeout=60_000)
                if tab == "scalars":
                    page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)  # the run
                    assert page.locator("vz-line-chart2").count() >= 4  # and hparam summaries
                screenshots[tab] = tmp_path / f"tensorboard-{tab}.png"
                deadline = time.monotonic() + 60
                page.screenshot(path=screenshots[tab])
                while not drawn(screenshots[tab], tab) and time.monotonic() < deadline:
                    time.sleep(1)  # a chart or the projector's points still being drawn
                    page.screenshot(path=screenshots[tab])
        finally:
            browser.close()
    for tab, screenshot in screenshots.items():
        print(f"screenshot: {screenshot}")
        assert Image.open(screenshot).size == (1280, 900)
        assert drawn(screenshot, tab), f"the {tab} tab rendered blank"


def drawn(screenshot: Path, tab: str) -> bool:
    """Whether the page below the tab bar, right of the side panel, shows more than one colour;
    for the projector, whether its 3-D view shows the images (dark squares) of its points."""
    image = Image.open(screenshot).convert("L")
    if tab == "projector":  # "Computing PCA..." over an empty view: under 1% dark pixels
        return (np.array(image.crop((330, 130, 960, 900))) < 60).mean() > 0.03
    content = image.crop((330, 130, 1280, 900))
    lo, hi = content.getextrema()
    return hi - lo > 100 and len(content.getcolors(maxcolors=1 << 16) or []) > 20


def test_the_graph_is_traced_without_torch_jit_deprecation_noise(small_sets, tmp_path):
    """add_graph traces with torch.jit, deprecated in torch 2.x: a student's run output shows
    none of those warnings."""
    with SummaryWriter(tmp_path) as writer, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tensorboard_panels.log_start(writer, "original", helpers.make_loader(small_sets[1], 64),
                                     torch.device("cpu"))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], caught
