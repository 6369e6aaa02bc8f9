"""Stages 7-8: photos become Fashion-MNIST-style inputs; confusion matrices count the mistakes."""
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import helpers


def as_photo(image: torch.Tensor, path, margin: int = 60, scale: int = 8, mode: str = "RGB"):
    """A real test image made to look like a photo: dark garment on white, larger, with margins."""
    garment = Image.fromarray(np.uint8(image.squeeze(0).numpy() * 255))
    garment = ImageOps.invert(garment).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    photo = Image.new("L", (28 * scale + 2 * margin, 28 * scale + margin), 255)
    photo.paste(garment, (margin, margin // 2))
    photo.convert(mode).save(path)
    return path


def test_a_photo_of_a_real_garment_comes_back_close_to_the_original(small_sets, tmp_path):
    _, _, test_set = small_sets
    for index in range(5):
        image, _ = test_set[index]
        loaded = helpers.load_photo(as_photo(image, tmp_path / f"photo{index}.jpg"))
        assert loaded.shape == (1, 28, 28) and loaded.dtype == torch.float32
        assert 0 <= loaded.min() and loaded.max() <= 1
        correlation = np.corrcoef(loaded.flatten(), image.flatten())[0, 1]
        assert correlation > 0.85, (index, correlation)


def test_a_photo_under_uneven_light_keeps_a_black_background(small_sets, tmp_path):
    """A background that darkens from one side to the other (a lamp, a shadow) must end up black,
    as Fashion-MNIST's is: the brightest part of the border sets the floor, not the darkest."""
    _, _, test_set = small_sets
    image, _ = test_set[0]
    even = Image.open(as_photo(image, tmp_path / "even.png", mode="L"))
    shade = np.linspace(1.0, 0.75, even.width)[None, :]  # the right side a quarter darker
    Image.fromarray(np.uint8(np.asarray(even, dtype=np.float32) * shade)).save(
        tmp_path / "uneven.png")
    loaded = helpers.load_photo(tmp_path / "uneven.png")
    assert np.corrcoef(loaded.flatten(), image.flatten())[0, 1] > 0.85
    assert loaded[image == 0].mean() < 0.05  # where the dataset's image is background, so is ours


def test_a_phone_photo_stored_sideways_is_turned_upright(small_sets, tmp_path):
    """Phones store a rotated picture as upright pixels plus an orientation tag (EXIF 6: turn it 90
    degrees clockwise to view): load_photo must follow the tag, as a photo viewer does."""
    _, _, test_set = small_sets
    image, _ = test_set[1]  # a pullover: not the same when turned sideways
    upright = Image.open(as_photo(image, tmp_path / "upright.png", mode="L"))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", exif=exif,
                                                      quality=95)
    loaded = helpers.load_photo(tmp_path / "sideways.jpg")
    assert np.corrcoef(loaded.flatten(), image.flatten())[0, 1] > 0.85
    # not left sideways
    assert np.corrcoef(loaded.flatten(), image.rot90(1, (1, 2)).flatten())[0, 1] < 0.8


def test_a_16_bit_grayscale_png_reads_like_its_8_bit_copy(small_sets, tmp_path):
    """Scanners and image editors save 16-bit grayscale; Pillow's convert() would clip it to
    white."""
    _, _, test_set = small_sets
    image, _ = test_set[2]
    eight = Image.open(as_photo(image, tmp_path / "eight.png", mode="L"))
    sixteen = np.asarray(eight, dtype=np.uint16) * 257  # 0-255 -> 0-65535
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    loaded_16, loaded_8 = (helpers.load_photo(tmp_path / "sixteen.png"),
                           helpers.load_photo(tmp_path / "eight.png"))
    assert torch.allclose(loaded_16, loaded_8, atol=1 / 255)


def test_transparent_png_and_light_on_dark_images(tmp_path):
    rgba = Image.new("RGBA", (300, 200), (0, 0, 0, 0))            # transparent background
    rgba.paste((40, 30, 120, 255), (50, 75, 250, 125))             # an opaque dark-blue band
    rgba.save(tmp_path / "cutout.png")
    loaded = helpers.load_photo(tmp_path / "cutout.png")
    assert loaded[0, 14, 14] > 0.5 and loaded[0, 0, 14] < 0.05      # light garment, dark margins
    rgba.paste((170, 170, 170, 255), (50, 75, 150, 125))           # its left half a lighter grey
    rgba.save(tmp_path / "two-tone.png")
    # transparency reads as a white background: the darker half is brighter
    loaded = helpers.load_photo(tmp_path / "two-tone.png")
    assert loaded[0, 14, 21] > loaded[0, 14, 7] + 0.3

    dark = Image.new("L", (50, 90), 0)
    dark.paste(220, (10, 10, 40, 80))                              # already Fashion-MNIST style
    dark.save(tmp_path / "dark.png")
    loaded = helpers.load_photo(tmp_path / "dark.png")
    assert loaded[0, 14, 14] > 0.5 and loaded[0, 14, 0] < 0.05     # not inverted, centred


def test_files_that_are_not_photos_are_refused(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a JPEG")
    with pytest.raises(ValueError, match="notes.jpg is not an image that can be read"):
        helpers.load_photo(tmp_path / "notes.jpg")
    Image.new("RGB", (200, 200), "navy").save(tmp_path / "photo.jpg")
    whole = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 3])   # an interrupted upload
    with pytest.raises(ValueError, match="cut.jpg is a damaged image .*save or download it again"):
        helpers.load_photo(tmp_path / "cut.jpg")
    with pytest.raises(ValueError, match="no photo at"):
        helpers.load_photo(tmp_path / "nowhere.jpg")
    with pytest.raises(ValueError, match="no photo at"):
        helpers.load_photo(tmp_path)  # a folder
    Image.new("RGB", (64, 64), "white").save(tmp_path / "blank.png")
    with pytest.raises(ValueError, match="no garment found"):
        helpers.load_photo(tmp_path / "blank.png")


def test_confusion_matrix_and_most_confused_pairs():
    labels = torch.tensor([0, 0, 0, 6, 6, 6, 2, 4])
    predictions = torch.tensor([0, 6, 6, 0, 6, 6, 4, 4])
    matrix = helpers.confusion_matrix(labels, predictions)
    assert matrix.shape == (10, 10) and matrix.sum() == len(labels)
    assert matrix[0, 6] == 2 and matrix[6, 0] == 1 and matrix.trace() == 4
    pairs = helpers.most_confused(matrix, k=3)
    assert pairs[0] == ("T-shirt/top", "Shirt", 2)
    assert set(pairs[1:]) == {("Shirt", "T-shirt/top", 1), ("Pullover", "Coat", 1)}
    assert helpers.most_confused(matrix, k=5) == pairs  # three mistakes made: no zero counts


def test_most_confused_lists_five_pairs_unless_asked_otherwise():
    labels = torch.arange(10).repeat_interleave(2)
    predictions = (labels + 1) % 10  # ten different mistakes
    assert len(helpers.most_confused(helpers.confusion_matrix(labels, predictions))) == 5


def test_predict_all_gives_the_true_labels_then_the_predictions(small_sets, cpu):
    class AlwaysBag(torch.nn.Module):
        def forward(self, images):
            return torch.nn.functional.one_hot(torch.full((len(images),), 8), 10).float()

    _, valid_set, _ = small_sets
    labels, predictions = helpers.predict_all(AlwaysBag(), helpers.make_loader(valid_set, 100),
                                              cpu)
    assert torch.equal(labels, torch.tensor([label for _, label in valid_set]))
    assert torch.equal(predictions, torch.full((len(valid_set),), 8))


def test_predict_all_matches_evaluate(small_sets, cpu):
    _, valid_set, _ = small_sets
    torch.manual_seed(0)
    model = helpers.build_model("original")
    loader = helpers.make_loader(valid_set, 100)
    labels, predictions = helpers.predict_all(model, loader, cpu)
    _, accuracy = helpers.evaluate(model, loader, torch.nn.CrossEntropyLoss(), cpu)
    assert len(labels) == len(valid_set)
    assert (labels == predictions).float().mean().item() == pytest.approx(accuracy)


def resident_mb() -> float:
    """This process's resident memory now, in MB (Linux)."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines()
                  if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux only)")
def test_predicting_thousands_of_single_images_does_not_grow_memory(small_sets):
    model = helpers.build_model("original").eval()
    _, _, test_set = small_sets
    images = [test_set[i][0] for i in range(len(test_set))]
    for image in images:  # warm-up: allocator pools and lazy initialisation settle
        helpers.predict(model, image)
    before = resident_mb()
    for _ in range(4):
        for image in images:
            helpers.predict(model, image)
    assert resident_mb() - before < 10, f"{before:.0f} MB -> {resident_mb():.0f} MB"


def test_feature_maps_are_what_the_forward_pass_computes(small_sets):
    torch.manual_seed(0)
    model = helpers.FMnistCNN().eval()
    images = torch.stack([small_sets[2][i][0] for i in range(4)])
    blocks = {"conv_block1": model.conv_block1, "conv_block2": model.conv_block2,
              "conv_block3": model.conv_block3, "linear2": model.linear2}
    maps = helpers.feature_maps(model.train(), images, blocks)  # eval() is its job
    with torch.no_grad():
        first = model.eval().conv_block1(images)
        second = model.conv_block2(first)
        third = model.conv_block3(second)
        logits = model(images)
    assert list(maps) == list(blocks)
    assert [tuple(m.shape) for m in maps.values()] == [(4, 32, 14, 14), (4, 64, 7, 7),
                                                       (4, 128, 3, 3), (4, 10)]
    for caught, computed in zip(maps.values(), (first, second, third, logits)):
        assert torch.equal(caught, computed)
    # the hooks are gone: a later forward pass catches nothing and costs nothing
    assert all(not layer._forward_hooks for layer in model.modules())


def test_feature_maps_remove_their_hooks_when_the_forward_pass_fails():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with pytest.raises(ValueError):
        helpers.feature_maps(model, torch.zeros(1, 1, 28, 28) + 2, {"linear": model[1]})
    broken = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(783, 10))
    with pytest.raises(RuntimeError):
        helpers.feature_maps(broken, torch.zeros(1, 1, 28, 28), {"flat": broken[0]})
    assert not broken[0]._forward_hooks


def test_feature_maps_of_a_network_of_your_own():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 5)
            self.head = torch.nn.Linear(3 * 24 * 24, 10)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).flatten(1))

    model = Tiny()
    image = torch.rand(1, 28, 28)
    maps = helpers.feature_maps(model, image, {"conv": model.conv})
    with torch.no_grad():
        assert torch.equal(maps["conv"], model.conv(image.unsqueeze(0)))


def test_feature_maps_keep_what_an_in_place_layer_after_them_overwrites():
    """On the CPU `.cpu()` returns the same tensor: without a copy, ReLU(inplace=True) after the
    hooked layer would zero the negative values of the stored map."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(inplace=True))
    image = torch.rand(1, 28, 28)
    maps = helpers.feature_maps(model, image, {"conv": model[0]})
    with torch.no_grad():
        assert torch.equal(maps["conv"], model[0](image.unsqueeze(0)))
    assert (maps["conv"] < 0).any()


class OneCorner(torch.nn.Module):
    """Class 1's logit grows with the ink in the top-left 6x6 corner; every other logit is 0."""

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        logits[:, 1] = x[:, 0, :6, :6].sum(dim=(1, 2)) - 14
        return logits


def test_occlusion_map_lights_up_the_pixels_the_answer_depends_on():
    image = torch.full((1, 28, 28), 0.5)
    heat = helpers.occlusion_map(OneCorner(), image, target=1, patch=4)
    assert heat.shape == (28, 28)
    assert (heat[:6, :6] > 0.05).all()          # covering the corner takes class 1 away
    # a 4x4 square that touches the corner reaches row and column 8 at most
    assert heat[8, :6].min() > 0 and heat[:, 8][:6].min() > 0
    assert heat[9:, :].abs().max() == 0 and heat[:, 9:].abs().max() == 0
    # the mean over covering squares: the corner pixel has one square, all of it on the corner
    probability = torch.softmax(OneCorner()(image.unsqueeze(0)), dim=1)[0, 1]
    covered = image.clone()
    covered[:, :4, :4] = 0
    alone = probability - torch.softmax(OneCorner()(covered.unsqueeze(0)), dim=1)[0, 1]
    assert torch.isclose(heat[0, 0], alone)
    assert heat.max() <= probability            # a mean of falls, not their sum
    # another class's map: covering the corner raises it (it takes probability from class 1)
    assert (helpers.occlusion_map(OneCorner(), image, target=0, patch=4)[:6, :6] < 0).all()


def test_occlusion_map_covers_squares_of_the_size_asked():
    image = torch.full((1, 28, 28), 0.5)
    small = helpers.occlusion_map(OneCorner(), image, target=1, patch=2)
    assert small[6, :6].min() > 0 and small[7:, :].abs().max() == 0
    assert small[:6, 6].min() > 0 and small[:, 7:].abs().max() == 0


def test_compare_seeds_is_the_runs_mean_over_the_baselines_and_the_larger_spread():
    compare = helpers.compare_seeds
    assert compare([2.0, 3.0, 4.0], [1.0, 1.0, 1.5]) == pytest.approx((3 - 3.5 / 3, 2))
    assert compare([1.0, 1.0, 1.5], [2.0, 3.0, 4.0]) == pytest.approx((3.5 / 3 - 3, 2))
    assert compare([1.0, 1.2], [5.0, 5.0, 5.1]) == pytest.approx((1.1 - 15.1 / 3, 0.2))


def test_the_sign_test_is_the_exact_two_sided_binomial_tail():
    assert helpers.sign_test(10, 0) == helpers.sign_test(0, 10) == 2 / 2 ** 10
    assert helpers.sign_test(5, 5) == helpers.sign_test(0, 0) == 1.0  # never above 1
    # P(X <= 40) for X ~ Binomial(100, 1/2), doubled
    assert abs(helpers.sign_test(60, 40) - 0.0569) < 1e-4
    assert helpers.sign_test(120, 80) < helpers.sign_test(60, 40)  # the same split, more images
