"""TensorBoard runs read back and drawn without a server (machinery/tensorboard_log.py): the runs
written here by TensorBoard's own SummaryWriter, the figures drawn by matplotlib off screen."""
import matplotlib
import matplotlib.pyplot as plt
import pytest
from matplotlib.font_manager import FontProperties
from torch.utils.tensorboard import SummaryWriter

import helpers

matplotlib.use("Agg")

# two runs of three epochs; the second did not log a validation loss
CURVES = {
    "baseline": {"loss/train": [0.92, 0.61, 0.48], "loss/valid": [0.70, 0.55, 0.51],
                 "accuracy/valid": [0.74, 0.80, 0.83]},
    "wider": {"loss/train": [0.85, 0.52, 0.40], "accuracy/valid": [0.77, 0.84, 0.86]},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for run, curves in CURVES.items():
        with SummaryWriter(root / run) as writer:
            for tag, values in curves.items():
                for epoch, value in enumerate(values, start=1):
                    writer.add_scalar(tag, value, epoch)
    return root


def test_read_scalars_keeps_every_point_of_a_long_run(tmp_path):
    """TensorBoard's reader keeps 10,000 points a tag by default and samples the rest away: a
    loss logged every batch of a long run comes back whole."""
    with SummaryWriter(tmp_path) as writer:
        for step in range(10_001):
            writer.add_scalar("loss/batch", 1 / (step + 1), step)
    steps, values = helpers.read_scalars(tmp_path)["loss/batch"]
    assert steps == list(range(10_001))
    assert values[-1] == pytest.approx(1 / 10_001)


def test_plot_runs_draws_a_panel_per_tag_with_a_curve_per_run(runs):
    fig = helpers.plot_runs(runs / "baseline", runs / "wider")
    try:
        assert tuple(fig.get_size_inches()) == pytest.approx((15, 3.6))  # 5 inches a panel
        assert len(fig.axes) == 3
        small = FontProperties(size="small").get_size_in_points()
        for ax, tag in zip(fig.axes, ("loss/train", "loss/valid", "accuracy/valid")):
            assert ax.get_title() == tag and ax.get_xlabel() == "epoch"
            drawn = [run for run in CURVES if tag in CURVES[run]]  # no loss/valid for "wider"
            assert [text.get_text() for text in ax.get_legend().get_texts()] == drawn
            assert all(text.get_fontsize() == small for text in ax.get_legend().get_texts())
            for line, run in zip(ax.get_lines(), drawn, strict=True):
                assert list(line.get_xdata()) == [1, 2, 3]
                assert list(line.get_ydata()) == pytest.approx(CURVES[run][tag])
                assert line.get_marker() == "."  # a dot on each epoch
    finally:
        plt.close(fig)


def test_plot_runs_sizes_the_figure_to_the_tags_asked_for(runs):
    fig = helpers.plot_runs(runs / "baseline", tags=("accuracy/valid",))
    try:
        assert tuple(fig.get_size_inches()) == pytest.approx((5, 3.6))
        assert [ax.get_title() for ax in fig.axes] == ["accuracy/valid"]
    finally:
        plt.close(fig)
