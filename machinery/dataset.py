"""The real Fashion-MNIST on disk, verified: from a local copy when there is one, else torchvision.

`prepare_data()` puts the four original files, decompressed, in torchvision's layout under
ROOT/FashionMNIST/raw/ and checks every file's SHA-256 before anything trains on it.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import zlib
from pathlib import Path

from torchvision import datasets

from .basics import DATA_ROOT, DatasetError, atomic_write

# SHA-256 of the decompressed original files. Debian's .gz files differ from the ones torchvision
# downloads (other gzip headers), so we check what is inside, not the archives.
RAW_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
HOW_TO_GET_DATA = ("connect to the internet (torchvision downloads it), or "
                   "`sudo apt-get install dataset-fashion-mnist`, or set FMNIST_DATA to a folder "
                   "holding the four original files (train-images-idx3-ubyte.gz ...)")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def local_copy_dirs() -> list[Path]:
    """Where to look for the original files before downloading, in order."""
    dirs = [Path(os.environ["FMNIST_DATA"]).expanduser()] if os.environ.get("FMNIST_DATA") else []
    return dirs + [DEBIAN_DATA_DIR]


def find_original_file(folder: Path, name: str) -> Path | None:
    """The file `name` or `name.gz` in `folder`, if present."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def unreadable(src: Path, error: OSError) -> DatasetError:
    """The error for a source file that cannot be opened or read to its end."""
    fix = "give yourself read permission on it, or " if isinstance(error, PermissionError) else ""
    return DatasetError(f"cannot read {src} ({error.strerror or error}): {fix}{HOW_TO_GET_DATA}")


def read_chunk(source, src: Path) -> bytes:
    """The next MiB of the open file `source` (src); a failed read blames src, not the copy."""
    try:
        return source.read(1 << 20)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # zlib: bad deflate data
        raise DatasetError(f"{src} is truncated or corrupt ({e}): replace it with a good copy, or "
                           + HOW_TO_GET_DATA) from None
    except OSError as e:  # mid-file: a failing disk, a network folder gone (no file name given)
        raise unreadable(src, e) from None


def copy_decompressed(src: Path, dest: Path) -> None:
    """Copy src (gz or plain) to dest decompressed, check its SHA-256, then move it into place."""
    digest = hashlib.sha256()
    try:
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin, atomic_write(dest) as fout:
            while chunk := read_chunk(fin, src):
                fout.write(chunk)
                digest.update(chunk)
            if digest.hexdigest() != RAW_SHA256[dest.name]:  # raised inside: dest is untouched
                raise DatasetError(f"{src} is not the original Fashion-MNIST file (SHA-256 "
                                   f"mismatch): replace it with a good copy, or " + HOW_TO_GET_DATA)
    except OSError as e:  # reads raise DatasetError: this is opening src, or writing the copy
        if str(e.filename) == str(src):
            raise unreadable(src, e) from None
        raise DatasetError(f"cannot write {dest} ({e.strerror or e}): choose a writable data "
                           f"folder with room for the four files (55 MB)") from None


def download_with_torchvision(root: Path) -> None:
    """Let torchvision download Fashion-MNIST into root (how Colab gets it)."""
    chatter = io.StringIO()  # torchvision prints one line per mirror it tries
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            datasets.FashionMNIST(root, train=True, download=True)
            datasets.FashionMNIST(root, train=False, download=True)
    except (RuntimeError, OSError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"  # what failed, and why
        raise DatasetError(f"Fashion-MNIST is not in {root} and could not be downloaded "
                           f"({reason}). Ways out: " + HOW_TO_GET_DATA) from None


def prepare_data(root: Path | str = DATA_ROOT) -> Path:
    """Make sure root/FashionMNIST/raw/ holds the four verified files; return root.

    Order: files already in place -> a local copy (FMNIST_DATA, then Debian's package) ->
    torchvision's download. Every file's SHA-256 is checked before anything trains on it.
    """
    root = Path(root)
    raw = root / "FashionMNIST" / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create the data folder {raw} ({e.strerror}): "
                           f"pass a writable folder as the data root") from None
    missing = [n for n in RAW_SHA256 if not (raw / n).is_file()]
    if missing:
        named = local_copy_dirs()[0] if os.environ.get("FMNIST_DATA") else None  # listed first
        absent = [n for n in missing if named and not find_original_file(named, n)]
        if absent:
            names = ", ".join(f"{name}.gz" for name in absent)
            raise DatasetError(f"FMNIST_DATA={os.environ['FMNIST_DATA']} does not hold all four "
                               f"Fashion-MNIST files (missing {names})")
        source = next((d for d in local_copy_dirs()
                       if all(find_original_file(d, n) for n in missing)), None)
        if source is not None:
            for name in missing:
                copy_decompressed(find_original_file(source, name), raw / name)
        else:
            download_with_torchvision(root)
    for name, expected in RAW_SHA256.items():
        if sha256_of(raw / name) != expected:
            raise DatasetError(f"{raw / name} is corrupt or truncated (SHA-256 mismatch): "
                               f"delete it and run again to fetch a fresh copy")
    return root

