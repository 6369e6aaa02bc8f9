"""nbval runs each notebook in a fresh kernel that inherits this environment: smoke mode for CI."""
import os

os.environ["FMNIST_SMOKE"] = "1"
os.environ.setdefault("MPLBACKEND", "agg")  # figures are rendered, never shown in a window
if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers (pytest -n): one thread per kernel
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["TQDM_DISABLE"] = "1"  # the epoch lines, not progress bars, in the executed notebooks
