"""TensorBoard: the events hold what fit() logged, a real server serves them, a real browser
shows them."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import replace

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

import helpers
from test_training import small_run

TAGS = ("loss/train", "loss/valid", "accuracy/valid", "learning_rate")
EPOCHS = 3


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, small_sets, small_settings):
    """A short real training run logged to a fresh runs folder: (runs folder, run name, history)."""
    runs = tmp_path_factory.mktemp("runs")
    run_dir = runs / "original-smoke-test"
    with SummaryWriter(run_dir) as writer:
        _, history, _ = small_run(small_sets, small_settings, runs, epochs=EPOCHS, writer=writer)
    return runs, run_dir.name, history


# One test reads the whole run: mutmut credits the code a module-scoped fixture runs to the first
# test that uses it, and runs only that test against a mutant of that code.
def test_a_run_logs_curves_matrix_hparams_and_layout_in_one_folder(logged_run, small_settings):
    runs, name, history = logged_run
    scalars = helpers.read_scalars(runs / name)
    for tag in TAGS:  # one value per epoch, step = epoch
        steps, _ = scalars[tag]
        assert steps == list(range(1, EPOCHS + 1)), tag
    assert scalars["accuracy/valid"][1] == pytest.approx(history.valid_accuracy, abs=1e-6)
    assert scalars["loss/train"][1] == pytest.approx(history.train_loss, rel=1e-6)
    assert scalars["hparam/best_valid_accuracy"][1] == pytest.approx([max(history.valid_accuracy)])
    assert scalars["hparam/final_valid_loss"][1] == pytest.approx([history.valid_loss[-1]])
    assert scalars["hparam/epochs"] == ([EPOCHS], [EPOCHS])

    assert [p.name for p in runs.iterdir()] == [name]  # no stray runs from add_scalars/add_hparams
    assert not [p for p in (runs / name).iterdir() if p.is_dir()]
    events = EventAccumulator(str(runs / name))
    events.Reload()
    # one confusion matrix, at the last epoch: the Images tab's slider shows which epoch it is
    assert [image.step for image in events.Images("valid/confusion_matrix")] == [history.epochs]
    # HParams: every setting the recipe sets, with its value
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    recipe = replace(small_settings, epochs=EPOCHS).as_dict()
    assert set(start.hparams) == {name for name, value in recipe.items() if value is not None}
    assert start.hparams["batch_size"].number_value == recipe["batch_size"]
    assert start.hparams["optimizer"].string_value == recipe["optimizer"]
    layout = events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    assert b"loss/train" in layout and b"loss/valid" in layout  # one chart with both losses


def test_plot_runs_draws_the_logged_curves(logged_run):
    runs, name, history = logged_run
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
    runs, name, _ = logged_run
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
    _, _, history = logged_run
    tags = get_json(f"{base}/data/plugin/scalars/tags")
    assert set(TAGS) <= set(tags[name])
    query = urllib.parse.urlencode({"run": name, "tag": "accuracy/valid"})
    series = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
    assert [step for _, step, _ in series] == list(range(1, EPOCHS + 1))
    assert [value for _, _, value in series] == pytest.approx(history.valid_accuracy, abs=1e-6)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run must install Debian's chromium package")
        pytest.skip("no chromium here (sudo apt-get install chromium); CI runs this test")
    return path


def test_browser_renders_the_scalar_dashboard(tensorboard_server, tmp_path):
    """Debian's Chromium, driven by Playwright (its selectors see inside TensorBoard's shadow
    DOM)."""
    from playwright.sync_api import sync_playwright
    base, name = tensorboard_server
    screenshot = tmp_path / "tensorboard-scalars.png"
    # The background-networking flags keep Chromium from calling out of this offline machine.
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/#scalars")
            page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)   # the run selector
            page.get_by_text("accuracy/valid").first.wait_for(timeout=60_000)   # a chart's title
            charts = page.locator("vz-line-chart2").count()
            page.screenshot(path=screenshot)
        finally:
            browser.close()
    print(f"screenshot: {screenshot}")
    assert charts >= 4  # accuracy, learning rate, loss, hparam summaries
    image = Image.open(screenshot).convert("L")
    assert image.size == (1280, 900)
    lo, hi = image.getextrema()
    assert hi - lo > 100 and len(image.getcolors(maxcolors=1 << 16) or []) > 20, \
        "the page rendered blank"
