"""Stage 9: checkpoints round-trip exactly, are written atomically, and bad ones fail clearly."""
import datetime
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn

import helpers
from machinery import checkpoint_file
from machinery.checkpoint_file import why_unreadable
from original_notebook import FMnist_CNN


def trained_a_little() -> nn.Module:
    """A network whose weights and BatchNorm statistics have moved away from their defaults."""
    torch.manual_seed(0)
    model = helpers.build_model("original")
    optimizer = torch.optim.Adam(model.parameters())
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.rand(16, 1, 28, 28)),
                                           torch.randint(0, 10, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_round_trip_gives_identical_logits(tmp_path):
    model = trained_a_little()
    helpers.save_checkpoint(tmp_path / "model.pt", model, epoch=3, metrics={"valid_accuracy": 0.5})
    loaded, meta = helpers.load_checkpoint(tmp_path / "model.pt")
    images = torch.rand(8, 1, 28, 28)
    assert torch.equal(loaded(images), model(images))
    assert not loaded.training
    assert meta["epoch"] == 3 and meta["metrics"] == {"valid_accuracy": 0.5}
    assert meta["architecture"] == "FMnistCNN" and meta["torch_version"] == str(torch.__version__)
    assert meta["classes"] == list(helpers.CLASSES)
    saved_at = datetime.datetime.strptime(meta["saved_at"], "%Y-%m-%d %H:%M:%S")
    assert abs(datetime.datetime.now() - saved_at) < datetime.timedelta(minutes=5)


def test_numpy_numbers_and_paths_are_saved_as_safe_loading_reads_them(tmp_path):
    model = trained_a_little()
    figures = {"valid_accuracy": np.float64(0.93), "per_epoch": [np.float32(0.5), 0.7],
               "epochs": np.int64(3), "folder": tmp_path, "pair": (np.float64(1.5), "x")}
    helpers.save_checkpoint(tmp_path / "model.pt", model, metrics=figures, note=tmp_path)
    meta = helpers.load_checkpoint(tmp_path / "model.pt")[1]   # safe (weights-only) loading
    assert meta["metrics"] == {"valid_accuracy": 0.93, "per_epoch": [0.5, 0.7], "epochs": 3,
                               "folder": str(tmp_path), "pair": (1.5, "x")}
    assert type(meta["metrics"]["valid_accuracy"]) is float and meta["note"] == str(tmp_path)
    assert type(meta["metrics"]["epochs"]) is int


def test_a_value_safe_loading_refuses_is_refused_at_saving(tmp_path):
    path = tmp_path / "model.pt"
    helpers.save_checkpoint(path, trained_a_little(), epoch=1)
    before = path.read_bytes()
    with pytest.raises(helpers.CheckpointError) as refused:
        helpers.save_checkpoint(path, trained_a_little(), metrics={"curve": [0.5, {1, 2}]})
    assert str(refused.value) == (
        "cannot save metrics['curve'][1], a set: a checkpoint keeps numbers, strings, lists, "
        "dicts and tensors, the values safe loading reads back; convert it (float(x), str(x), "
        "torch.tensor(x)) or leave it out")
    assert path.read_bytes() == before   # the checkpoint already there is kept


def test_a_checkpoint_goes_into_folders_that_do_not_exist_yet(tmp_path):
    path = tmp_path / "runs" / "today" / "best.pt"  # e.g. a fresh Drive or checkpoints/ folder
    helpers.save_checkpoint(path, trained_a_little(), epoch=2)
    assert helpers.load_checkpoint(path)[1]["epoch"] == 2


def test_a_checkpoint_on_an_unmounted_drive_is_refused_and_no_folder_made(tmp_path,
                                                                          monkeypatch):
    mount = tmp_path / "content" / "drive"
    monkeypatch.setattr(checkpoint_file, "DRIVE_MOUNT", mount)
    path = mount / "MyDrive" / "fashion-mnist-cnn" / "checkpoints" / "original.pt"
    with pytest.raises(helpers.CheckpointError) as refused:
        helpers.save_checkpoint(path, trained_a_little(), epoch=1)
    assert str(refused.value) == (
        f"{path} is on Google Drive, which is not mounted: mount it first (stage 6's "
        f"checkpoint_folder(keep_on_drive=True) does)")
    assert not mount.exists()          # no local stand-in for Drive, lost with the runtime
    mount.mkdir(parents=True)          # the mount point itself, left after an unmount
    with pytest.raises(helpers.CheckpointError, match="which is not mounted"):
        helpers.save_checkpoint(path, trained_a_little(), epoch=1)
    assert list(mount.iterdir()) == []
    (mount / "MyDrive").mkdir(parents=True)   # what mounting Drive makes appear
    helpers.save_checkpoint(path, trained_a_little(), epoch=1)
    assert helpers.load_checkpoint(path)[1]["epoch"] == 1


def test_a_state_dict_saved_by_the_original_notebook_loads(tmp_path):
    torch.manual_seed(0)
    original = FMnist_CNN()
    torch.save(original.state_dict(), tmp_path / "last_checkpoint.pth")  # as the original did
    loaded, meta = helpers.load_checkpoint(tmp_path / "last_checkpoint.pth")
    assert meta["model"] == "original" and meta["format"] == "bare state_dict"
    assert meta["epoch"] is None and meta["metrics"] == {}  # what notebooks 7-9 print from
    for (name, ours), theirs in zip(loaded.state_dict().items(), original.state_dict().values()):
        assert torch.equal(ours, theirs), name


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    helpers.save_checkpoint(path, trained_a_little(), epoch=1)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # Colab's stop button, or a dropped runtime

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        helpers.save_checkpoint(path, helpers.build_model("original"), epoch=2)
    monkeypatch.undo()
    _, meta = helpers.load_checkpoint(path)
    assert meta["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left behind


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "cut.pt"
    helpers.save_checkpoint(path, trained_a_little())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(helpers.CheckpointError,
                       match=r"cut\.pt is not a readable PyTorch checkpoint: "
                             r"the file is cut short"):
        helpers.load_checkpoint(path)


NOT_A_ZIP = "torch.save writes a zip archive and this file is not one (a text file? an image?)"


@pytest.mark.parametrize("content, reason", [
    (b"", "the file is empty"),
    (b"hello, I am a text file\n", NOT_A_ZIP),
    (bytes(range(256)) * 10, NOT_A_ZIP),
])
def test_files_that_are_not_checkpoints_are_refused(tmp_path, content, reason):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(helpers.CheckpointError) as refused:
        helpers.load_checkpoint(path)
    assert str(refused.value) == f"{path} is not a readable PyTorch checkpoint: {reason}"


def torch_says(path) -> str:
    """The first line of torch's own error for a file it cannot load."""
    with pytest.raises(Exception) as error:
        torch.load(path, weights_only=True)
    return str(error.value).strip().splitlines()[0]


def test_an_old_style_pickle_and_a_foreign_zip_are_refused_in_torchs_words(tmp_path):
    """Files that look like a checkpoint (an old torch's pickle, a zip archive) but do not load:
    the student reads torch's own reason, not a guess."""
    old_style = tmp_path / "old.pt"
    old_style.write_bytes(b"\x80\x02}q\x00X\x01")  # a pickle's header, cut short
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        opened.writestr("notes.txt", "not a checkpoint")
    for path in (old_style, archive):
        with pytest.raises(helpers.CheckpointError) as refused:
            helpers.load_checkpoint(path)
        assert str(refused.value) == (f"{path} is not a readable PyTorch checkpoint: "
                                      f"{torch_says(path)}")
    # any other error: its first line, at most 200 characters, or its type when it says nothing
    assert why_unreadable(archive, RuntimeError("first line\nsecond line")) == "first line"
    assert why_unreadable(archive, RuntimeError("x" * 300)) == "x" * 200
    assert why_unreadable(archive, RuntimeError("  ")) == "RuntimeError"


def test_pickled_code_is_refused_without_running_it(tmp_path):
    # pickles the class, not just tensors
    path = tmp_path / "whole-module.pt"
    torch.save({"model": nn.Linear(2, 2)}, path)
    with pytest.raises(helpers.CheckpointError) as refused:
        helpers.load_checkpoint(path)
    assert str(refused.value) == (
        f"{path} is not a readable PyTorch checkpoint: it holds Python objects that safe "
        f"(weights-only) loading refuses: not a course checkpoint or a state_dict; never load "
        f"such files from sources you do not trust")


def test_a_shape_mismatch_names_the_layer(tmp_path):
    state = helpers.build_model("original").state_dict()
    state["linear1.weight"] = torch.zeros(256, 1152)
    torch.save(state, tmp_path / "wider.pt")
    with pytest.raises(helpers.CheckpointError,
                       match=r"linear1\.weight is \[256, 1152\] in the file but \[128, 1152\]"):
        helpers.load_checkpoint(tmp_path / "wider.pt")


def test_other_objects_are_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(helpers.CheckpointError, match="holds a list, not a course checkpoint"):
        helpers.load_checkpoint(tmp_path / "list.pt")
    torch.save({"w": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pt")  # not a state_dict
    with pytest.raises(helpers.CheckpointError, match="holds a dict, not a course checkpoint"):
        helpers.load_checkpoint(tmp_path / "mixed.pt")


HINT = "; for another network, pass a fresh one: load_checkpoint(path, model=YourNetwork())"


def test_another_architecture_is_refused_with_the_mismatch(tmp_path):
    other = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    torch.save(other.state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(helpers.CheckpointError) as refused:
        helpers.load_checkpoint(tmp_path / "mlp.pt")
    first_three = ", ".join(list(helpers.build_model("original").state_dict())[:3])
    assert str(refused.value) == (
        f"{tmp_path / 'mlp.pt'} (a bare state_dict) does not fit FMnistCNN: "
        f"30 missing keys ({first_three}, ...); 2 unexpected keys (1.weight, 1.bias){HINT}")
    # one key: said in the singular, and named
    state = helpers.build_model("original").state_dict()
    del state["linear2.bias"]
    torch.save(state, tmp_path / "one-short.pt")
    with pytest.raises(helpers.CheckpointError) as refused:
        helpers.load_checkpoint(tmp_path / "one-short.pt")
    assert str(refused.value) == (f"{tmp_path / 'one-short.pt'} (a bare state_dict) does not fit "
                                  f"FMnistCNN: 1 missing key (linear2.bias){HINT}")


@pytest.mark.parametrize("extra, listed", [(3, "a, b, c"), (4, "a, b, c, ...")])
def test_a_mismatch_lists_three_names_at_most(tmp_path, extra, listed):
    state = helpers.build_model("original").state_dict()
    state.update({name: torch.zeros(1) for name in "abcd"[:extra]})
    for name in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"):
        state[name] = torch.zeros(7)  # four layers of the wrong shape: three are named
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(helpers.CheckpointError) as refused:
        helpers.load_checkpoint(tmp_path / "odd.pt")
    assert str(refused.value) == (
        f"{tmp_path / 'odd.pt'} (a bare state_dict) does not fit FMnistCNN: "
        f"{extra} unexpected keys ({listed}); linear1.weight is [7] in the file but [128, 1152] "
        f"in the network; linear1.bias is [7] in the file but [128] in the network; "
        f"linear2.weight is [7] in the file but [10, 128] in the network{HINT}")


def test_a_network_the_course_does_not_know_needs_one_passed_in(tmp_path):
    path = helpers.save_checkpoint(tmp_path / "model.pt", trained_a_little())
    payload = torch.load(path, weights_only=True)
    payload["model"], payload["architecture"] = None, "TransformerNet"
    torch.save(payload, path)
    with pytest.raises(helpers.CheckpointError,
                       match=r"model\.pt holds a network of your own \(TransformerNet\), "
                             r"not one of the course's: pass a fresh one, "
                             r"load_checkpoint\(path, model=YourNetwork\(\)\)"):
        helpers.load_checkpoint(path)
    model, _ = helpers.load_checkpoint(path, model=helpers.build_model("original"))
    assert not model.training
    payload["architecture"] = None  # a file that names no class says so
    torch.save(payload, path)
    with pytest.raises(helpers.CheckpointError, match=r"holds a network of your own \(unnamed\)"):
        helpers.load_checkpoint(path)


def test_your_own_network_trains_through_fit_and_loads_back(small_sets, small_recipe, tmp_path):
    # a network of the student's own, as notebook 4's exercises have them write: not in NETWORKS
    from test_fast_path import SmallConvNet as StudentCNN
    train_set, valid_set, _ = small_sets
    torch.manual_seed(0)
    model = StudentCNN()
    optimizer = helpers.make_optimizer(model, small_recipe)
    valid_loader = helpers.make_loader(valid_set, 256)
    history = helpers.fit(model, helpers.make_loader(train_set, 32, shuffle=True), valid_loader,
                          nn.CrossEntropyLoss(), optimizer,
                          helpers.make_scheduler(optimizer, small_recipe),
                          torch.device("cpu"), epochs=2, best_path=tmp_path / "mine.pt",
                          log=lambda _: None)
    meta = helpers.read_checkpoint(tmp_path / "mine.pt")
    assert meta["model"] is None and meta["architecture"] == StudentCNN.__name__
    with pytest.raises(helpers.CheckpointError, match="pass a fresh one"):
        helpers.load_checkpoint(tmp_path / "mine.pt")
    loaded, info = helpers.load_checkpoint(tmp_path / "mine.pt", model=StudentCNN())
    assert type(loaded) is StudentCNN and info["epoch"] == history.best_epoch
    accuracy = helpers.evaluate(loaded, valid_loader, nn.CrossEntropyLoss(), torch.device("cpu"))[1]
    assert accuracy == max(history.valid_accuracy)
    named_both = rf"\({StudentCNN.__name__}\) does not fit FMnistCNN"
    with pytest.raises(helpers.CheckpointError, match=named_both):  # the wrong network passed
        helpers.load_checkpoint(tmp_path / "mine.pt", model=helpers.build_model("original"))


def test_a_loaded_network_is_moved_to_the_device_asked(tmp_path):
    class Moved(helpers.FMnistCNN):  # records where it is sent (this machine has one device)
        def to(self, *args, **kwargs):
            self.sent_to = args
            return super().to(*args, **kwargs)

    helpers.save_checkpoint(tmp_path / "model.pt", trained_a_little(), epoch=1)
    model, _ = helpers.load_checkpoint(tmp_path / "model.pt", "cpu", model=Moved())
    assert model.sent_to == ("cpu",)


def test_ctrl_c_while_loading_stops_instead_of_calling_the_file_unreadable(tmp_path,
                                                                             monkeypatch):
    helpers.save_checkpoint(tmp_path / "model.pt", trained_a_little(), epoch=1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # a slow load from Drive, stopped

    monkeypatch.setattr(torch, "load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        helpers.read_checkpoint(tmp_path / "model.pt")


def test_a_subclass_of_a_course_network_is_your_own_network(tmp_path):
    class Mine(helpers.FMnistCNN):
        pass

    helpers.save_checkpoint(tmp_path / "mine.pt", Mine(), epoch=1)
    assert helpers.read_checkpoint(tmp_path / "mine.pt")["model"] is None
    with pytest.raises(helpers.CheckpointError, match="pass a fresh one"):
        helpers.load_checkpoint(tmp_path / "mine.pt")
    assert type(helpers.load_checkpoint(tmp_path / "mine.pt", model=Mine())[0]) is Mine


def test_what_a_checkpoint_says_leaves_the_weights_and_training_state_out(tmp_path):
    helpers.save_checkpoint(tmp_path / "last.pt", trained_a_little(), epoch=2,
                            training_state={"history": {}})
    _, meta = helpers.load_checkpoint(tmp_path / "last.pt")
    assert "state_dict" not in meta and "training_state" not in meta and meta["epoch"] == 2


def test_missing_checkpoint(tmp_path):
    with pytest.raises(helpers.CheckpointError, match="no checkpoint at"):
        helpers.load_checkpoint(tmp_path / "nowhere.pt")


def test_smoke_runs_never_overwrite_a_real_runs_checkpoints(tmp_path):
    full = helpers.checkpoint_paths(helpers.course_recipe(smoke=False), tmp_path)
    smoke = helpers.checkpoint_paths(helpers.course_recipe(smoke=True), tmp_path)
    assert [p.name for p in full] == ["original.pt", "original-last.pt"]
    assert [p.name for p in smoke] == ["original-smoke.pt", "original-smoke-last.pt"]


def test_a_full_run_on_fewer_training_images_is_not_named_smoke(tmp_path):
    """`python -m machinery.tools trial original-fast train_size=2000` is a real experiment."""
    sized = helpers.course_recipe(smoke=False, train_size=2000)
    assert [p.name for p in helpers.checkpoint_paths(sized, tmp_path)] == \
        ["original.pt", "original-last.pt"]
    assert "smoke" not in helpers.run_name(sized)
    smoke_sized = helpers.course_recipe(smoke=True, train_size=2000)  # a smoke trial of it
    assert helpers.checkpoint_paths(smoke_sized, tmp_path)[0].name == "original-smoke.pt"


def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    # torch.save records each tensor's device through location_tag(); tagging them "cuda:0" writes
    # the same bytes a Colab GPU run writes, without needing a GPU here.
    model = trained_a_little()
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        helpers.save_checkpoint(tmp_path / "from-colab.pt", model, epoch=3)
    if not torch.cuda.is_available():  # proof that the file really points at a GPU
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "from-colab.pt", weights_only=True)
    loaded, meta = helpers.load_checkpoint(tmp_path / "from-colab.pt", "cpu")
    assert meta["epoch"] == 3 and next(loaded.parameters()).device.type == "cpu"
    images = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(images), model(images))
