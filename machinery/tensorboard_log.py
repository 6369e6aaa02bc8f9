"""TensorBoard runs read back with TensorBoard's own reader, and drawn without a server."""
from __future__ import annotations

from pathlib import Path


def read_scalars(run_dir: Path | str) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar series of a TensorBoard run, read with TensorBoard's own reader:
    tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in events.Tags()["scalars"]}


def plot_runs(*run_dirs: Path | str, tags=("loss/train", "loss/valid", "accuracy/valid")):
    """The TensorBoard curves of one or more runs, drawn with matplotlib (no server needed)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(tags), figsize=(5 * len(tags), 3.6), squeeze=False)
    for run_dir in run_dirs:
        scalars = read_scalars(run_dir)
        for ax, tag in zip(axes[0], tags):
            if tag in scalars:
                ax.plot(*scalars[tag], marker=".", label=Path(run_dir).name)
    for ax, tag in zip(axes[0], tags):
        ax.set(title=tag, xlabel="epoch")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
