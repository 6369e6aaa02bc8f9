"""Stage 1: the real dataset, found offline, verified, split the same way for everyone."""
import contextlib
import errno
import gzip
import hashlib
import io
import shutil
from dataclasses import replace

import pytest
import torch

import helpers
from machinery import dataset
from machinery.recipes import SMOKE_SIZES

# Restated from COURSE.md on purpose: a typo in dataset.RAW_SHA256 must fail a test.
COURSE_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_COPY = dataset.DEBIAN_DATA_DIR  # taken before any test hides it


def test_prepared_files_are_the_originals(data_root):
    assert dataset.RAW_SHA256 == COURSE_SHA256
    raw = data_root / "FashionMNIST" / "raw"
    for name, expected in COURSE_SHA256.items():
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == expected


def test_split_sizes_and_test_set(data_root):
    train, valid, test = helpers.load_datasets(helpers.course_recipe(smoke=False), root=data_root)
    assert (len(train), len(valid), len(test)) == (50_000, 10_000, 10_000)
    image, label = train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and 0 <= label <= 9
    assert set(train.indices).isdisjoint(valid.indices)
    assert sorted(train.indices + valid.indices) == list(range(60_000))
    # roles: training and validation from the 60,000 training images, test from the other 10,000
    assert train.dataset.train and valid.dataset.train and not test.train


def test_split_is_the_same_for_everyone(data_root):
    first_train, first_valid, _ = helpers.load_datasets(helpers.course_recipe(smoke=False),
                                                        root=data_root)
    torch.manual_seed(1234)  # the global RNG must not matter
    again_train, again_valid, _ = helpers.load_datasets(helpers.course_recipe(smoke=False),
                                                        root=data_root)
    assert first_train.indices == again_train.indices
    assert first_valid.indices == again_valid.indices
    assert first_train.indices[:5] != list(range(5))  # shuffled, not the first images


def test_a_final_fit_trains_on_the_validation_images_too(data_root):
    from machinery import engine
    train, valid, _ = helpers.load_datasets(helpers.course_recipe(smoke=False), root=data_root)
    final_recipe = helpers.course_recipe(smoke=False, name="improved", final_fit=True)
    final, final_valid, _ = engine.recipe_datasets(final_recipe, data_root)
    assert len(final) == 60_000 and sorted(final.indices) == list(range(60_000))
    assert final.indices[:50_000] == train.indices and final_valid.indices == valid.indices
    assert torch.equal(final[50_000][0], valid[0][0])  # the images themselves, not only indices
    # a smaller validation report changes nothing of what a final fit learns from
    final, small_valid, _ = engine.recipe_datasets(replace(final_recipe, valid_size=1000),
                                                   data_root)
    assert (len(final), len(small_valid)) == (60_000, 1_000)
    plain, _, _ = engine.recipe_datasets(helpers.course_recipe(smoke=False), data_root)
    assert plain.indices == train.indices


def test_each_set_is_cut_to_its_own_size(data_root):
    recipe = helpers.course_recipe(smoke=False, train_size=700, valid_size=300, test_size=200)
    train, valid, test = helpers.load_datasets(recipe, root=data_root)
    assert (len(train), len(valid), len(test)) == (700, 300, 200)


def test_smoke_subsets_are_small_and_drawn_from_the_same_split(data_root):
    full_train, _, _ = helpers.load_datasets(helpers.course_recipe(smoke=False), root=data_root)
    train, valid, test = helpers.load_datasets(helpers.course_recipe(smoke=True), root=data_root)
    assert (len(train), len(valid), len(test)) == tuple(SMOKE_SIZES.values())
    assert torch.equal(train[7][0], full_train[7][0])


def test_the_readme_and_helpers_state_smoke_modes_sizes():
    """The smoke sizes are written out where people read them: kept in step with SMOKE_SIZES."""
    train, valid, test = (f"{size:,}" for size in SMOKE_SIZES.values())
    readme = (helpers.REPO_ROOT / "README.md").read_text()
    assert f"| smoke mode: {train} / {valid} / {test} images and 2 epochs," in readme
    assert f"runs the same code on {train} training images" in readme
    assert f"smoke mode: {train} training images" in helpers.load_datasets.__doc__


def test_local_copy_is_found_through_FMNIST_DATA(monkeypatch, tmp_path, data_root, no_local_copy):
    # A folder of plain (decompressed) originals, as a student might have from elsewhere.
    copy = tmp_path / "my-copy"
    copy.mkdir()
    for name in COURSE_SHA256:
        shutil.copy(data_root / "FashionMNIST" / "raw" / name, copy / name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FMNIST_DATA", "~/my-copy")  # as people write it in a shell
    root = helpers.prepare_data(tmp_path / "data")
    for name, expected in COURSE_SHA256.items():
        assert dataset.sha256_of(root / "FashionMNIST" / "raw" / name) == expected


def test_debian_gz_copy_is_decompressed_into_torchvision_layout(tmp_path, data_root):
    if not dataset.DEBIAN_DATA_DIR.is_dir():
        pytest.fail("Debian's dataset-fashion-mnist is not installed: .ci/run installs it")
    root = helpers.prepare_data(tmp_path / "data")
    train, _, _ = helpers.load_datasets(helpers.course_recipe(smoke=True), root=root)
    assert len(train) == SMOKE_SIZES["train_size"]
    assert not list((root / "FashionMNIST" / "raw").glob(".*.tmp"))


def gz_copy_with(tmp_path, broken_name: str, payload: bytes, compress: bool = True):
    """A folder with three good files and one replaced by `payload`."""
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in COURSE_SHA256:
        shutil.copy(DEBIAN_COPY / f"{name}.gz", folder / f"{name}.gz")
    target = folder / f"{broken_name}.gz"
    target.write_bytes(gzip.compress(payload) if compress else payload)
    return folder


def test_truncated_gz_is_named_and_nothing_is_kept(monkeypatch, tmp_path, no_local_copy):
    good = (DEBIAN_COPY / "train-labels-idx1-ubyte.gz").read_bytes()
    folder = gz_copy_with(tmp_path, "train-labels-idx1-ubyte", good[: len(good) // 2],
                          compress=False)
    monkeypatch.setenv("FMNIST_DATA", str(folder))
    with pytest.raises(helpers.DatasetError,
                       match="train-labels-idx1-ubyte.gz is truncated or corrupt"):
        helpers.prepare_data(tmp_path / "data")
    assert not (tmp_path / "data" / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte").exists()


def test_a_gz_with_corrupt_compressed_data_is_named(monkeypatch, tmp_path, no_local_copy):
    good = bytearray((DEBIAN_COPY / "t10k-labels-idx1-ubyte.gz").read_bytes())
    good[10:74] = b"\xff" * 64   # the 10-byte header intact, then no valid deflate block
    folder = gz_copy_with(tmp_path, "t10k-labels-idx1-ubyte", bytes(good), compress=False)
    monkeypatch.setenv("FMNIST_DATA", str(folder))
    with pytest.raises(helpers.DatasetError,
                       match="t10k-labels-idx1-ubyte.gz is truncated or corrupt"):
        helpers.prepare_data(tmp_path / "data")
    assert not (tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()


def test_wrong_checksum_is_named(monkeypatch, tmp_path, no_local_copy):
    folder = gz_copy_with(tmp_path, "t10k-labels-idx1-ubyte", b"\x00" * 10008)
    monkeypatch.setenv("FMNIST_DATA", str(folder))
    with pytest.raises(helpers.DatasetError,
                       match=r"t10k-labels-idx1-ubyte.gz is not the original.*SHA-256"):
        helpers.prepare_data(tmp_path / "data")


def test_corrupt_file_already_in_place_is_refused(tmp_path, data_root):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in COURSE_SHA256:
        shutil.copy(data_root / "FashionMNIST" / "raw" / name, raw / name)
    with open(raw / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(1_000_000)
    with pytest.raises(helpers.DatasetError,
                       match="train-images-idx3-ubyte is corrupt or truncated.*delete it"):
        helpers.load_datasets(root=tmp_path / "data")


def test_FMNIST_DATA_without_the_files_says_so(monkeypatch, tmp_path, no_local_copy):
    monkeypatch.setenv("FMNIST_DATA", str(tmp_path / "empty"))
    with pytest.raises(helpers.DatasetError, match="FMNIST_DATA=.* does not hold all four"):
        helpers.prepare_data(tmp_path / "data")


def test_offline_without_a_copy_names_the_three_ways_out(tmp_path, no_local_copy):
    with pytest.raises(helpers.DatasetError) as info:
        helpers.prepare_data(tmp_path / "data")
    message = str(info.value)
    assert "could not be downloaded" in message
    assert ("internet" in message and "apt-get install dataset-fashion-mnist" in message
            and "FMNIST_DATA" in message)
    assert "\n" not in message and "Traceback" not in message


def test_unwritable_data_folder_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(helpers.DatasetError, match="cannot create the data folder"):
        helpers.prepare_data(blocker / "data")


def test_loaders_have_the_course_lengths(data_root):
    train, valid, test = helpers.load_datasets(helpers.course_recipe(smoke=False), root=data_root)
    loaders = [helpers.make_loader(s, 16) for s in (train, valid, test)]
    assert [len(loader) for loader in loaders] == [3125, 625, 625]
    images, labels = next(iter(loaders[0]))
    assert images.shape == (16, 1, 28, 28) and labels.shape == (16,)
    # In-memory images: worker processes would only compete with training for Colab's 2 cores.
    assert {loader.num_workers for loader in loaders} == {0}


def test_first_keeps_a_whole_dataset_as_it_is(data_root):
    _, _, test = helpers.load_datasets(helpers.course_recipe(smoke=False), root=data_root)
    assert helpers.first(test, len(test)) is test  # still a FashionMNIST: .classes, .targets
    assert len(helpers.first(test, len(test) - 1)) == len(test) - 1


def test_the_course_split_is_pinned_by_a_fingerprint():
    """Every student, stored output and reference checkpoint uses this validation set: a changed
    split seed or split method would silently give everyone different images."""
    _, valid = helpers.split_train_valid(list(range(60_000)))
    assert list(valid.indices[:5]) == [59753, 9414, 10988, 15501, 49861]
    assert hashlib.sha256(str(list(valid.indices)).encode()).hexdigest()[:16] == "4603f175cf318a7e"


def test_a_shuffled_loader_changes_the_order_reproducibly_from_its_seed():
    numbers = torch.utils.data.TensorDataset(torch.arange(100))

    def order(**kwargs) -> list[int]:
        return torch.cat([batch for (batch,)
                          in helpers.make_loader(numbers, 16, **kwargs)]).tolist()

    assert order() == list(range(100))
    shuffled = order(shuffle=True, generator=torch.Generator().manual_seed(0))
    assert shuffled != list(range(100)) and sorted(shuffled) == list(range(100))
    assert order(shuffle=True, generator=torch.Generator().manual_seed(0)) == shuffled
    assert order(shuffle=True, generator=torch.Generator().manual_seed(1)) != shuffled


# ---- What mutmut's survivors of machinery/dataset.py showed untested ----------------------------

def test_FMNIST_DATA_without_the_files_names_every_missing_one(monkeypatch, tmp_path,
                                                              no_local_copy):
    monkeypatch.setenv("FMNIST_DATA", str(tmp_path / "empty"))
    with pytest.raises(helpers.DatasetError) as error:
        helpers.prepare_data(tmp_path / "data")
    assert str(error.value) == (f"FMNIST_DATA={tmp_path / 'empty'} does not hold all four "
                                f"Fashion-MNIST files (missing train-images-idx3-ubyte.gz, "
                                f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                                f"t10k-labels-idx1-ubyte.gz)")


def test_FMNIST_DATA_short_of_one_file_names_that_one(monkeypatch, tmp_path, no_local_copy):
    """Not the first file missing from data/: the one missing from the FMNIST_DATA folder."""
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (partial / f"{name}.gz").write_bytes(b"")  # present (its checksum is checked later)
    monkeypatch.setenv("FMNIST_DATA", str(partial))
    with pytest.raises(helpers.DatasetError, match=r"\(missing t10k-labels-idx1-ubyte.gz\)$"):
        helpers.prepare_data(tmp_path / "data")


def test_a_copy_into_a_folder_it_cannot_write_says_so(monkeypatch, tmp_path):
    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(dataset, "atomic_write", refused)  # root writes anywhere: a stand-in
    dest = tmp_path / "t10k-labels-idx1-ubyte"
    with pytest.raises(helpers.DatasetError) as error:
        dataset.copy_decompressed(DEBIAN_COPY / "t10k-labels-idx1-ubyte.gz", dest)
    assert str(error.value) == (f"cannot write {dest} (Permission denied): choose a writable "
                                f"data folder with room for the four files (55 MB)")


def test_a_read_failing_mid_file_is_reported_as_the_source(monkeypatch, tmp_path):
    """A failing disk or a network folder gone: EIO with no file name, raised by read()."""
    class FailingDisk(io.BytesIO):
        def read(self, size=-1):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(dataset.gzip, "open", lambda path, mode="rb": FailingDisk())
    src, dest = DEBIAN_COPY / "t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte"
    with pytest.raises(helpers.DatasetError) as error:
        dataset.copy_decompressed(src, dest)
    # no advice about permissions: reading is allowed, the disk failed
    assert str(error.value) == f"cannot read {src} (Input/output error): {dataset.HOW_TO_GET_DATA}"
    assert not dest.exists()


def test_a_full_disk_is_reported_as_the_copy_not_the_source(monkeypatch, tmp_path):
    """A write error names no file (ENOSPC from write()): the good source is not blamed."""
    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    @contextlib.contextmanager
    def full(path):
        yield FullDisk()

    monkeypatch.setattr(dataset, "atomic_write", full)
    dest = tmp_path / "t10k-labels-idx1-ubyte"
    with pytest.raises(helpers.DatasetError) as error:
        dataset.copy_decompressed(DEBIAN_COPY / "t10k-labels-idx1-ubyte.gz", dest)
    assert str(error.value).startswith(f"cannot write {dest} (No space left on device)")
    assert "corrupt" not in str(error.value)


def test_a_file_it_cannot_read_is_named_as_unreadable(monkeypatch, tmp_path):
    src = DEBIAN_COPY / "t10k-labels-idx1-ubyte.gz"

    def refused(path, mode="rb"):
        raise PermissionError(13, "Permission denied", str(path))  # as open() raises it

    monkeypatch.setattr(dataset.gzip, "open", refused)  # root reads anything: a stand-in
    with pytest.raises(helpers.DatasetError) as error:
        dataset.copy_decompressed(src, tmp_path / "t10k-labels-idx1-ubyte")
    assert str(error.value).startswith(f"cannot read {src} (Permission denied): give yourself "
                                       f"read permission")
    assert not (tmp_path / "t10k-labels-idx1-ubyte").exists()


def test_the_download_asks_torchvision_for_both_sets_into_the_root(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(dataset.datasets, "FashionMNIST",
                        lambda root, **options: asked.append((root, options)))
    dataset.download_with_torchvision(tmp_path)
    assert asked == [(tmp_path, {"train": True, "download": True}),
                     (tmp_path, {"train": False, "download": True})]


@pytest.mark.parametrize("failure, reason", [
    (RuntimeError("Error downloading train-images-idx3-ubyte.gz"),
     "Error downloading train-images-idx3-ubyte.gz"),
    (RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n\n  Tried mirror A\n"
                  "  Tried mirror B\n"), "Error downloading train-images-idx3-ubyte.gz: "
                                         "Tried mirror B"),
    (OSError(), "OSError")])
def test_a_failed_download_says_in_one_line_what_failed_and_why(failure, reason, monkeypatch,
                                                                  tmp_path):
    def fails(root, **options):
        raise failure

    monkeypatch.setattr(dataset.datasets, "FashionMNIST", fails)
    with pytest.raises(helpers.DatasetError) as error:
        dataset.download_with_torchvision(tmp_path)
    assert str(error.value) == (f"Fashion-MNIST is not in {tmp_path} and could not be downloaded "
                                f"({reason}). Ways out: " + dataset.HOW_TO_GET_DATA)
