"""Stage 7: photos as people have them. Every bit depth and colour mode Pillow opens, transparency
and rotation tags must read like the plain 8-bit photo of the same real test image; a picture with
no garment, or a file that is not a usable image, gets a clear error and the file is left as it was.

Each fixture is made here from a real Fashion-MNIST test image: inverted (a dark garment on white,
as a photo shows it), enlarged, with margins, then saved in the mode under test. What predict() is
given (as_image_batch) is checked here too."""
import numpy as np
import pytest
import torch
from PIL import Image

import helpers


@pytest.fixture(scope="module")
def garment(small_sets, tmp_path_factory):
    """A real test image, its photo (uint8, dark on white) and what load_photo makes of that photo
    saved as an ordinary 8-bit RGB PNG: the reference every other mode must match."""
    _, _, test_set = small_sets
    image, _ = test_set[0]  # an ankle boot: not the same turned or flipped, so rotations show
    enlarged = Image.fromarray(np.uint8(image.squeeze(0).numpy() * 255)).resize(
        (168, 168), Image.Resampling.BICUBIC)
    photo = np.full((208, 248), 255, dtype=np.uint8)
    photo[20:188, 40:208] = 255 - np.asarray(enlarged)
    path = tmp_path_factory.mktemp("reference") / "photo.png"
    Image.fromarray(photo).convert("RGB").save(path)
    return image, photo, helpers.load_photo(path)


def reads_like(path, reference: torch.Tensor, mode: str, tolerance: float = 2 / 255) -> None:
    """The file opens in `mode` (so the test tries what it says) and loads as the reference does."""
    with Image.open(path) as img:
        assert img.mode == mode, f"Pillow opened {path.name} as {img.mode}, not {mode}"
    loaded = helpers.load_photo(path)
    assert loaded.shape == (1, 28, 28) and loaded.dtype == torch.float32
    difference = (loaded - reference).abs().max().item()
    assert difference <= tolerance, \
        f"{path.name} ({mode}) differs from the 8-bit photo by {difference:.3f}"


def with_nan_margin(photo: np.ndarray) -> np.ndarray:
    """The photo in 0-1 floats, a block of its margin holding no value (NaN), as scientific
    files may."""
    pixels = photo.astype(np.float32) / 255
    pixels[:15, :30] = np.nan
    return pixels


# name: (the photo in that form, file name, the mode Pillow opens it in)
DEEP = {
    "16-bit grayscale PNG": (lambda p: Image.fromarray(p.astype(np.uint16) * 257), "png", "I;16"),
    "32-bit integer TIFF, full range": (lambda p: Image.fromarray(p.astype(np.int32) << 23),
                                        "tif", "I"),
    "32-bit integer TIFF, 16-bit values": (lambda p: Image.fromarray(p.astype(np.int32) * 257),
                                           "tif", "I"),
    "32-bit integer TIFF, 8-bit values": (lambda p: Image.fromarray(p.astype(np.int32)),
                                          "tif", "I"),
    "32-bit signed TIFF, centred on 0": (
        lambda p: Image.fromarray((p.astype(np.int32) - 128) * 1000), "tif", "I"),
    "float TIFF, 0-1": (lambda p: Image.fromarray(p.astype(np.float32) / 255), "tif", "F"),
    "float TIFF, 0-255": (lambda p: Image.fromarray(p.astype(np.float32)), "tif", "F"),
    "float TIFF, NaN in the margin": (lambda p: Image.fromarray(with_nan_margin(p)), "tif", "F"),
}


@pytest.mark.parametrize("name", DEEP)
def test_deep_grayscale_reads_like_the_8_bit_photo(garment, tmp_path, name):
    """16- and 32-bit integers and floats: Pillow's convert() would clip them at 255 (pure
    white)."""
    _, photo, reference = garment
    make, suffix, mode = DEEP[name]
    path = tmp_path / f"photo.{suffix}"
    make(photo).save(path)
    reads_like(path, reference, mode)


def black_ink_only(photo: np.ndarray) -> Image.Image:
    """CMYK as a press prints grey: no cyan, magenta or yellow, the shade all in the black ink."""
    empty = Image.new("L", (photo.shape[1], photo.shape[0]), 0)
    return Image.merge("CMYK", [empty, empty, empty, Image.fromarray(255 - photo)])


def mixed_inks(photo: np.ndarray) -> Image.Image:
    """CMYK with the shade shared between the colour inks and the black one: each lets through the
    square root of the light, as inks on paper multiply."""
    ink = Image.fromarray(np.uint8(np.round(255 - np.sqrt(255.0 * photo))))
    return Image.merge("CMYK", [ink, ink, ink, ink])


COLOUR = {  # Pillow writes CMYK JPEGs as Photoshop does: inverted, with an Adobe marker
    "CMYK JPEG, colour inks only": (lambda p: Image.fromarray(p).convert("RGB").convert("CMYK"),
                                    "jpg", "CMYK", 3 / 255),
    "CMYK JPEG, black ink only": (black_ink_only, "jpg", "CMYK", 3 / 255),
    "CMYK TIFF, mixed inks": (mixed_inks, "tif", "CMYK", 2 / 255),
    "palette PNG": (lambda p: Image.fromarray(p).convert("P"), "png", "P", 2 / 255),
    "palette GIF": (lambda p: Image.fromarray(p).convert("P"), "gif", "P", 2 / 255),
    "1-bit PNG (dithered)": (lambda p: Image.fromarray(p).convert("1"), "png", "1", 0.12),
    "LAB TIFF": (lambda p: Image.fromarray(p).convert("RGB").convert("LAB"), "tif", "LAB", 3 / 255),
}


@pytest.mark.parametrize("name", COLOUR)
def test_colour_modes_read_like_the_8_bit_photo(garment, tmp_path, name):
    _, photo, reference = garment
    make, suffix, mode, tolerance = COLOUR[name]
    path = tmp_path / f"photo.{suffix}"
    make(photo).save(path, **({"quality": 95} if suffix == "jpg" else {}))
    reads_like(path, reference, mode, tolerance)


def on_black_palette(photo: np.ndarray) -> Image.Image:
    """A grey palette (putpalette turns "L" into "P") whose last entry, the background's, is
    black."""
    img = Image.fromarray(photo)
    img.putpalette([v for i in range(255) for v in (i, i, i)] + [0, 0, 0])
    return img


def hidden_black(photo: np.ndarray) -> np.ndarray:
    """The photo with its white background (value 255) made black: transparency must hide it."""
    return np.where(photo == 255, 0, np.maximum(photo, 1)).astype(np.uint8)


def alpha_of(photo: np.ndarray) -> Image.Image:
    """An alpha channel: the white background transparent, the rest opaque."""
    return Image.fromarray(np.where(photo == 255, 0, 255).astype(np.uint8))


def rounded_corners(photo: np.ndarray) -> Image.Image:
    """A whole photo, opaque, but for its corners cut round (transparent, black beneath), as apps
    export pictures: the photo's own white background stays its background."""
    rows, cols = np.ogrid[:photo.shape[0], :photo.shape[1]]
    near_y, near_x = (np.minimum(rows, photo.shape[0] - 1 - rows),
                      np.minimum(cols, photo.shape[1] - 1 - cols))
    outside = (near_y < 12) & (near_x < 12) & ((12 - near_y) ** 2 + (12 - near_x) ** 2 > 144)
    alpha = Image.fromarray(np.where(outside, 0, 255).astype(np.uint8))
    return Image.merge("RGBA", [Image.fromarray(np.where(outside, 0, photo).astype(np.uint8))] * 3
                       + [alpha])


# name: (the photo with a transparent background, file name, mode, what save() needs)
TRANSPARENT = {
    "grayscale with alpha (LA) PNG": (
        lambda p: Image.merge("LA", [Image.fromarray(hidden_black(p)), alpha_of(p)]),
        "png", "LA", {}),
    "RGBA PNG": (
        lambda p: Image.merge("RGBA", [Image.fromarray(hidden_black(p))] * 3 + [alpha_of(p)]),
        "png", "RGBA", {}),
    "palette PNG, transparent index": (on_black_palette, "png", "P", {"transparency": 255}),
    "palette PNG, alpha per entry": (on_black_palette, "png", "P",
                                     {"transparency": b"\xff" * 255 + b"\x00"}),
    "palette GIF, transparent index": (on_black_palette, "gif", "P", {"transparency": 255}),
    "grayscale PNG, transparent grey": (lambda p: Image.fromarray(hidden_black(p)), "png", "L",
                                        {"transparency": 0}),
    "RGBA PNG, rounded corners": (rounded_corners, "png", "RGBA", {}),
    "RGB PNG, transparent colour": (lambda p: Image.fromarray(hidden_black(p)).convert("RGB"),
                                    "png", "RGB", {"transparency": (0, 0, 0)}),
}


@pytest.mark.parametrize("name", TRANSPARENT)
def test_a_transparent_background_is_background_not_black(garment, tmp_path, name):
    """Under the transparent pixels the file holds black; read as black, the photo would have a
    black background and a dark garment, and come out as noise."""
    _, photo, reference = garment
    make, suffix, mode, options = TRANSPARENT[name]
    path = tmp_path / f"cutout.{suffix}"
    make(photo).save(path, **options)
    reads_like(path, reference, mode)


def test_a_white_garment_cut_out_shows_against_black(garment, tmp_path):
    """A white shirt cut out on transparency (as shops publish them) would vanish on a white
    background: it must come out as its silhouette, light on black."""
    image, photo, _ = garment
    shape = photo < 250
    light = np.where(shape, 255 - (255 - photo) // 12, 255).astype(np.uint8)  # 235-255: near white
    Image.merge("LA", [Image.fromarray(light),
                       Image.fromarray(np.uint8(shape) * 255)]).save(tmp_path / "white.png")
    loaded = helpers.load_photo(tmp_path / "white.png")
    silhouette = (image > 0.05).float()
    assert np.corrcoef(loaded.flatten(), silhouette.flatten())[0, 1] > 0.85
    assert loaded[silhouette == 0].mean() < 0.1 and loaded[silhouette == 1].mean() > 0.6


# pixels as stored for each tag
STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", STORED)
@pytest.mark.parametrize("kind", ["JPEG", "16-bit PNG"])
def test_the_exif_orientation_tag_is_followed(garment, tmp_path, orientation, kind):
    """Cameras store the pixels as the sensor saw them and a tag that says how to turn them."""
    _, photo, reference = garment
    stored = Image.fromarray(photo).transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    if kind == "JPEG":
        stored.save(path := tmp_path / "camera.jpg", exif=exif, quality=95)
        reads_like(path, reference, "L", 3 / 255)
    else:
        Image.fromarray(np.asarray(stored).astype(np.uint16) * 257).save(
            path := tmp_path / "camera.png", exif=exif)
        reads_like(path, reference, "I;16")


def as_bytes(image: torch.Tensor) -> np.ndarray:
    """A real image (1x28x28, 0-1) as the 8-bit pixels it was stored as."""
    return np.uint8(np.round(image.squeeze(0).numpy() * 255))


def test_a_picture_in_fashion_mnist_style_comes_back_pixel_for_pixel(small_sets, tmp_path):
    """A garment as tall as its 28x28 frame and centred in it is neither cropped nor scaled: light
    on black (the dataset's style) or dark on white (its photo), every grey level comes back."""
    _, _, test_set = small_sets
    image, _ = test_set[6]  # a coat, rows 0-27, columns 4-23
    framed = np.pad(as_bytes(image), 1)  # a one-pixel black frame: the background to read
    Image.fromarray(framed).save(tmp_path / "light.png")
    Image.fromarray(255 - framed).save(tmp_path / "dark.png")
    assert torch.equal(helpers.load_photo(tmp_path / "light.png"), image)
    assert torch.equal(helpers.load_photo(tmp_path / "dark.png"), image)


def test_a_dim_garment_is_stretched_to_white_in_exact_proportion(small_sets, tmp_path):
    """Its brightest shade becomes white and the others keep their proportion, to the nearest
    level: the coat in two dim shades, 34 and 29 of 255, comes back as 255 and 218 (29/34 of 255
    is 217.5, which goes to the even level, as numpy rounds)."""
    _, _, test_set = small_sets
    image, _ = test_set[6]
    dim = np.select([image[0] > 0.5, image[0] > 0.1], [34, 29], 0).astype(np.uint8)
    Image.fromarray(np.pad(dim, 1)).save(tmp_path / "dim.png")
    expected = np.select([dim == 34, dim == 29], [255, 218], 0).astype(np.float32) / 255
    assert torch.equal(helpers.load_photo(tmp_path / "dim.png"),
                       torch.from_numpy(expected).unsqueeze(0))


EMPTY = {
    "16-bit grey": (lambda: Image.fromarray(np.full((60, 80), 40000, np.uint16)), "png"),
    "32-bit integer, bright": (lambda: Image.fromarray(np.full((60, 80), 3 << 28, np.int32)),
                               "tif"),
    "float grey": (lambda: Image.fromarray(np.full((60, 80), 0.5, np.float32)), "tif"),
    "float, no values (NaN)": (lambda: Image.fromarray(np.full((60, 80), np.nan, np.float32)),
                               "tif"),
    "CMYK": (lambda: Image.new("CMYK", (80, 60), (0, 0, 0, 30)), "jpg"),
    "1-bit white": (lambda: Image.new("1", (80, 60), 1), "png"),
    "RGBA, all transparent": (lambda: Image.new("RGBA", (80, 60), (0, 0, 0, 0)), "png"),
    "palette, all transparent": (lambda: Image.new("P", (80, 60), 0), "gif"),
}


@pytest.mark.parametrize("name", EMPTY)
def test_a_picture_with_no_garment_gets_the_clear_error_in_every_mode(tmp_path, name):
    make, suffix = EMPTY[name]
    path = tmp_path / f"empty.{suffix}"
    make().save(path, **({"transparency": 0} if name.startswith("palette") else {}))
    with pytest.raises(ValueError, match="no garment found"):
        helpers.load_photo(path)


def test_bad_files_get_an_actionable_error_and_are_left_as_they_were(garment, tmp_path,
                                                                     monkeypatch):
    _, photo, _ = garment
    Image.fromarray(photo.astype(np.uint16) * 257).save(tmp_path / "scan.tif")
    whole = (tmp_path / "scan.tif").read_bytes()
    # an interrupted copy of a 16-bit scan
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="cut.tif is a damaged image .*save or download it again"):
        helpers.load_photo(tmp_path / "cut.tif")
    assert (tmp_path / "cut.tif").read_bytes() == whole[: len(whole) // 2]

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses pictures over twice this
    with pytest.raises(ValueError, match="scan.tif is too large to open .*shrink it"):
        helpers.load_photo(tmp_path / "scan.tif")
    assert (tmp_path / "scan.tif").read_bytes() == whole


# ---- What predict() is given ---------------------------------------------------------------------

def test_images_in_any_layout_become_a_float_batch_of_the_same_pixels(small_sets):
    """predict() takes what people have: one image or a batch, with or without its channel, a
    tensor or a numpy array, 0-1 floats (numpy's image / 255 is float64) or 0-255 bytes."""
    _, _, test_set = small_sets
    batch = torch.stack([test_set[0][0], test_set[1][0]])  # [2, 1, 28, 28]
    as_numpy_bytes = np.stack([as_bytes(image) for image in batch])  # [2, 28, 28]
    for given, expected in [(batch[0, 0], batch[:1]),  # [28, 28]
                            (batch[0], batch[:1]),  # [1, 28, 28]
                            (batch[:, 0], batch),  # [2, 28, 28]: two images, no channel
                            (batch, batch),
                            (as_numpy_bytes, batch),
                            (as_numpy_bytes / 255, batch)]:
        images = helpers.as_image_batch(given)
        assert images.dtype == torch.float32 and torch.equal(images, expected)
    classes, _ = helpers.predict(helpers.FMnistCNN(), as_numpy_bytes / 255)
    assert classes.shape == (2,)
