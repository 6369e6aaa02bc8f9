"""Stage 7: photos as people have them. Every bit depth and colour mode Pillow opens, transparency
and rotation tags must read like the plain 8-bit photo of the same real test image; a picture with
no garment, or a file that is not a usable image, gets a clear error and the file is left as it was.

Each fixture is made here from a real Fashion-MNIST test image: inverted (a dark garment on white,
as a photo shows it), enlarged, with margins, then saved in the mode under test. What predict() is
given (as_image_batch) is checked here too."""
import warnings

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


def reads_like(path, reference: torch.Tensor, mode: str, tolerance: float = 0.0) -> None:
    """The file opens in `mode` (so the test tries what it says) and loads as the reference does:
    exactly, unless a lossy format (JPEG, 1-bit dithering) is given a tolerance."""
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


def just_past_half_way(photo: np.ndarray, white: float) -> np.ndarray:
    """The photo as float32 on a 0-`white` scale, each level but black and white stored as the
    value just past half-way down to the level below: still nearest its own level, by a hair."""
    half_way = ((photo.astype(np.float64) - 0.5) * white / 255).astype(np.float32)
    values = np.nextafter(half_way, np.float32(np.inf))
    return np.select([photo == 0, photo == 255], [0, white], values).astype(np.float32)


def just_past_half_way_16(photo: np.ndarray) -> np.ndarray:
    """16-bit values a level's 257 apart: 257p - 128 is nearest p, 257p - 129 nearest p - 1."""
    return np.maximum(photo.astype(np.int32) * 257 - 128, 0)


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
    "float TIFF, centred on 0 (-0.5..0.5)": (
        lambda p: Image.fromarray(p.astype(np.float32) / 255 - 0.5), "tif", "F"),
    "16-bit PNG, values just past half-way": (
        lambda p: Image.fromarray(just_past_half_way_16(p).astype(np.uint16)), "png", "I;16"),
    "32-bit integer TIFF, 16-bit values just past half-way": (
        lambda p: Image.fromarray(just_past_half_way_16(p)), "tif", "I"),
    "float TIFF, 0-1, just past half-way": (
        lambda p: Image.fromarray(just_past_half_way(p, 1.0)), "tif", "F"),
    "float TIFF, 0-255, just past half-way": (
        lambda p: Image.fromarray(just_past_half_way(p, 255.0)), "tif", "F"),
    "float TIFF, counts up to 100,000": (
        lambda p: Image.fromarray(just_past_half_way(p, 1e5)), "tif", "F"),
}


@pytest.mark.parametrize("name", DEEP)
def test_deep_grayscale_reads_like_the_8_bit_photo(garment, tmp_path, name):
    """16- and 32-bit integers and floats: Pillow's convert() would clip them at 255 (pure
    white). Each must load exactly as the 8-bit photo: every value goes to its nearest 8-bit level
    on its format's scale (16 bits, 8-bit values, 0-1, or the picture's own range), even a value a
    hair from half-way."""
    _, photo, reference = garment
    make, suffix, mode = DEEP[name]
    path = tmp_path / f"photo.{suffix}"
    make(photo).save(path)
    reads_like(path, reference, mode)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_a_dim_photo_keeps_the_8_bit_scale_in_a_deeper_file(garment, tmp_path, mode):
    """32-bit integer and float files holding 8-bit values are read on the 8-bit scale even with
    no white in them: a dim photo (its paper at 80% grey) reads as its own 8-bit copy."""
    _, photo, _ = garment
    dim = np.uint8(np.round(photo * 0.8))
    Image.fromarray(dim).save(tmp_path / "dim.png")
    Image.fromarray(dim.astype(np.int32 if mode == "I" else np.float32)).save(tmp_path / "dim.tif")
    reads_like(tmp_path / "dim.tif", helpers.load_photo(tmp_path / "dim.png"), mode)


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
    # white beneath, and opaque just over half (128 of 255): a backdrop, not a cut-out's background
    "RGBA PNG, white backdrop at half opacity": (
        lambda p: Image.merge("RGBA", [Image.fromarray(p)] * 3
                              + [Image.fromarray(np.where(p == 255, 128, 255).astype(np.uint8))]),
        "png", "RGBA", {}),
}


@pytest.mark.parametrize("name", TRANSPARENT)
def test_a_transparent_background_is_background_not_black(garment, tmp_path, name):
    """Under the transparent pixels the file holds black; read as black, the photo would have a
    black background and a dark garment, and come out as noise."""
    _, photo, reference = garment
    make, suffix, mode, options = TRANSPARENT[name]
    path = tmp_path / f"cutout.{suffix}"
    make(photo).save(path, **options)
    reads_like(path, reference, mode, tolerance=2 / 255)  # hidden_black lifts black to 1


def cut_out(light: np.ndarray, shape: np.ndarray, beneath: int = 255) -> Image.Image:
    """A grayscale cut-out: `light` where `shape` is, transparent elsewhere with `beneath` stored
    under the transparency."""
    return Image.merge("LA", [Image.fromarray(np.where(shape, light, beneath).astype(np.uint8)),
                              Image.fromarray(np.uint8(shape) * 255)])


def the_garments_columns(pixels: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """The picture cut to the columns the garment spans: it touches both sides."""
    columns = np.nonzero(shape.any(axis=0))[0]
    return pixels[:, columns.min():columns.max() + 1]


# name: (its light: 235-255 or one grey just over 90% white, what the file holds beneath the
# transparency, whether the garment touches the picture's sides)
WHITE_CUT_OUTS = {
    "near white, white beneath": (lambda photo: 255 - (255 - photo) // 12, 255, False),
    # most editors save transparent pixels as (0, 0, 0, 0)
    "near white, black beneath": (lambda photo: 255 - (255 - photo) // 12, 0, False),
    "near white, touching the sides": (lambda photo: 255 - (255 - photo) // 12, 0, True),
    "230 (just over 90% white)": (lambda photo: np.full_like(photo, 230), 255, False),
}


@pytest.mark.parametrize("name", WHITE_CUT_OUTS)
def test_a_white_garment_cut_out_shows_against_black(garment, tmp_path, name):
    """A white shirt cut out on transparency (as shops publish them) would vanish on a white
    background: it must come out as its silhouette, light on black."""
    image, photo, _ = garment
    light, beneath, touching = WHITE_CUT_OUTS[name]
    shape = photo < 250
    picture = cut_out(light(photo), shape, beneath)
    if touching:
        picture = Image.fromarray(the_garments_columns(np.asarray(picture), shape))
    picture.save(tmp_path / "white.png")
    loaded = helpers.load_photo(tmp_path / "white.png")
    silhouette = (image > 0.05).float()
    assert np.corrcoef(loaded.flatten(), silhouette.flatten())[0, 1] > 0.85
    assert loaded[silhouette == 0].mean() < 0.1 and loaded[silhouette == 1].mean() > 0.6


def test_a_half_transparent_part_of_a_white_cut_out_shows_half_as_bright(small_sets, tmp_path):
    """Against black, a part at half opacity (a sheer sleeve) is half as bright as the rest."""
    _, _, test_set = small_sets
    image, _ = test_set[0]
    shape = np.pad(image.squeeze(0).numpy() > 0.05, 2)
    alpha = np.uint8(shape) * 255
    alpha[:, 16:] //= 2  # the right half of the garment at half opacity
    Image.merge("LA", [Image.new("L", (32, 32), 255), Image.fromarray(alpha)]).resize(
        (128, 128), Image.Resampling.NEAREST).save(tmp_path / "sheer.png")
    loaded = helpers.load_photo(tmp_path / "sheer.png")[0]
    silhouette, column = image.squeeze(0) > 0.05, torch.arange(28)
    left = loaded[silhouette & (column < 13)].mean()
    right = loaded[silhouette & (column > 15)].mean()
    assert left > 0.8 and 0.4 < right / left < 0.6, (left, right)


def test_exactly_half_is_not_most_for_a_cut_out(tmp_path):
    """A cut-out is a picture transparent on more than half its edge, and a white one is one more
    than half near white (by opacity): at exactly half, each goes the way of just under half."""
    shape = np.zeros((112, 112), bool)  # a white garment, opaque
    shape[20:92, 30:82] = True
    light = np.where(shape, 250, 0)
    strip = np.zeros((112, 112), bool)  # a dark strip up the lower half of the sides and along
    strip[56:, :2] = strip[56:, -2:] = strip[-2:, :] = True  # the bottom: half the edge
    under_half = strip.copy()
    under_half[56, :] = False
    cut_out(np.where(strip, 60, light), shape | strip).save(tmp_path / "strip.png")
    cut_out(np.where(under_half, 60, light), shape | under_half).save(tmp_path / "shorter.png")
    # or a larger one, in two whites (250 and 235), on a black backdrop 215 of 255 opaque above
    # and 40 below: half opaque on average (exactly, in float32 too), against 39 below
    large = np.zeros((112, 112), bool)
    large[8:104, 12:100] = True
    whites = np.where(large, np.where(np.arange(112) < 56, 250, 235), 0)
    for bottom in (40, 39):
        alpha = np.where(large, 255, np.where(np.arange(112)[:, None] < 56, 215, bottom))
        Image.merge("LA", [Image.fromarray(whites.astype(np.uint8)),
                           Image.fromarray(alpha.astype(np.uint8))]).save(
            tmp_path / f"backdrop{bottom}.png")
    assert torch.equal(helpers.load_photo(tmp_path / "strip.png"),
                       helpers.load_photo(tmp_path / "shorter.png"))
    assert torch.equal(helpers.load_photo(tmp_path / "backdrop40.png"),
                       helpers.load_photo(tmp_path / "backdrop39.png"))
    # a cut-out exactly half near white (250) and half grey (128): not a white one, it goes on
    # white, where its white half vanishes and it reads as its grey half alone
    two_tone = np.where(np.arange(112) < 56, 250, 128) * np.ones((112, 1))
    cut_out(two_tone, shape).save(tmp_path / "two-tone.png")
    cut_out(two_tone, shape & (np.arange(112) >= 56)).save(tmp_path / "grey-half.png")
    assert torch.equal(helpers.load_photo(tmp_path / "two-tone.png"),
                       helpers.load_photo(tmp_path / "grey-half.png"))


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


def test_a_large_photo_is_shrunk_with_lanczos_filtering(small_sets, tmp_path):
    """Shrinking to 28x28 uses Pillow's sharpest filter, Lanczos: a real image enlarged four times
    (each pixel a 4x4 block) comes back as Pillow's Lanczos reduction of that enlargement."""
    _, _, test_set = small_sets
    image, _ = test_set[126]  # a bag filling its whole frame: nothing to crop or pad
    enlarged = Image.fromarray(as_bytes(image)).resize((112, 112), Image.Resampling.NEAREST)
    Image.fromarray(np.pad(np.asarray(enlarged), 1)).save(tmp_path / "large.png")
    shrunk = enlarged.resize((28, 28), Image.Resampling.LANCZOS)
    assert torch.equal(helpers.load_photo(tmp_path / "large.png"),
                       torch.from_numpy(np.asarray(shrunk, dtype=np.float32) / 255).unsqueeze(0))


def test_a_tightly_cropped_photo_reads_like_one_with_wide_margins(small_sets, tmp_path):
    """The background is read from the outermost pixels alone: trousers photographed with one pixel
    of white all round (waist, hems and legs on the next ones) load as with wide margins."""
    _, _, test_set = small_sets
    image, _ = test_set[2]  # trousers: waist and hems along the top and bottom, legs flared
    enlarged = np.asarray(Image.fromarray(as_bytes(image)).resize(
        (112, 112), Image.Resampling.BICUBIC))
    rows, columns = np.nonzero(enlarged > 25)
    garment = 255 - enlarged[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    for margin in (1, 40):
        Image.fromarray(np.pad(garment, margin, constant_values=255)).save(
            tmp_path / f"margin{margin}.png")
    assert torch.equal(helpers.load_photo(tmp_path / "margin1.png"),
                       helpers.load_photo(tmp_path / "margin40.png"))


def on_backdrop(pixels: np.ndarray, backdrop: int, margin: int = 20) -> Image.Image:
    """A garment's pixels (28x28) enlarged four times, on a backdrop of one grey."""
    enlarged = np.asarray(Image.fromarray(pixels).resize((112, 112), Image.Resampling.BICUBIC))
    return Image.fromarray(np.pad(enlarged, margin, constant_values=backdrop))


def test_a_backdrop_just_over_mid_grey_is_light_and_the_garment_dark(small_sets, tmp_path):
    """More than half light is a light backdrop: a dark garment on grey 128 (of 255) is found as
    dark on light, and comes out as the dataset's image."""
    _, _, test_set = small_sets
    image, _ = test_set[0]
    on_backdrop(np.uint8(128 - np.round(as_bytes(image) / 2)), 128).save(tmp_path / "grey.png")
    loaded = helpers.load_photo(tmp_path / "grey.png")
    assert np.corrcoef(loaded.flatten(), image.flatten())[0, 1] > 0.85


def test_a_faint_garment_on_grey_is_found_and_stretched_to_white(small_sets, tmp_path):
    """A dim, flat photo: a garment at most 20 levels lighter than its grey backdrop (115). The
    backdrop becomes black, and the garment's brightest part white, as in the dataset."""
    _, _, test_set = small_sets
    image, _ = test_set[0]
    on_backdrop(np.uint8(115 + np.round(image.squeeze(0).numpy() * 20)), 115).save(
        tmp_path / "faint.png")
    loaded = helpers.load_photo(tmp_path / "faint.png")
    assert loaded.max() > 0.9 and loaded[0, 0, 0] == 0


def test_a_speck_a_tenth_of_the_way_to_white_is_not_garment(small_sets, tmp_path):
    """Garment is what stands more than a tenth of the way from the background to white: a speck
    exactly a tenth above a camera's grey-black (30 on 5, of 255) is not cropped in."""
    _, _, test_set = small_sets
    image, _ = test_set[0]
    clean = np.asarray(on_backdrop(np.maximum(as_bytes(image), 5), 5))
    specked = clean.copy()
    specked[4:8, 4:8] = 30
    Image.fromarray(clean).save(tmp_path / "clean.png")
    Image.fromarray(specked).save(tmp_path / "specked.png")
    assert torch.equal(helpers.load_photo(tmp_path / "specked.png"),
                       helpers.load_photo(tmp_path / "clean.png"))


def test_a_faint_shadow_on_under_a_tenth_of_the_border_changes_nothing(garment, tmp_path):
    """The background's level is the 90th percentile of the border: a faint shadow (235) along
    the top, on 87 of the border's 912 pixels (9.5%), is neither background nor garment."""
    _, photo, reference = garment
    shadowed = photo.copy()
    shadowed[:6, :81] = 235  # 81 pixels of the top row, 6 of the left column
    Image.fromarray(shadowed).save(tmp_path / "shadow.png")
    assert torch.equal(helpers.load_photo(tmp_path / "shadow.png"), reference)


def test_a_border_exactly_half_light_is_not_a_light_backdrop(small_sets, tmp_path):
    """A backdrop is light, and the picture inverted, when its border is more than half light: a
    light garment on a wall (215) over a table (40), the border exactly half each, reads as with
    the table a level darker."""
    _, _, test_set = small_sets
    image, _ = test_set[0]
    garment = np.asarray(Image.fromarray(as_bytes(image)).resize(
        (48, 48), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    for table in (40, 39):
        scene = np.full((112, 112), float(table), np.float32)
        scene[:56] = 215  # the wall: (215 + 40) / 2 is half of 255
        scene[4:52, 32:80] = 215 * (1 - garment) + 255 * garment  # the garment, on the wall
        Image.fromarray(np.uint8(np.round(scene))).save(tmp_path / f"table{table}.png")
    assert torch.equal(helpers.load_photo(tmp_path / "table40.png"),
                       helpers.load_photo(tmp_path / "table39.png"))


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
    # on its format's scale, a 16-bit block of 255 is 1 of 255: nearly black
    "16-bit, faint (at most 255 of 65535)": (lambda: block(np.uint16, 255), "png"),
    # 32-bit integers are 8-bit values unless larger: a mask of 0s and 1s is nearly black too
    "32-bit integer, a mask of 0s and 1s": (lambda: block(np.int32, 1), "tif"),
    "32-bit signed, one value throughout": (
        lambda: Image.fromarray(np.full((60, 80), -5, np.int32)), "tif"),
}


def block(dtype, value) -> Image.Image:
    """A 60x80 picture of zeros with a block of `value` in the middle."""
    pixels = np.zeros((60, 80), dtype)
    pixels[15:45, 20:60] = value
    return Image.fromarray(pixels)


@pytest.mark.parametrize("name", EMPTY)
def test_a_picture_with_no_garment_gets_the_clear_error_in_every_mode(tmp_path, name):
    """The error, and nothing else: no numpy warning about dividing by zero on the way."""
    make, suffix = EMPTY[name]
    path = tmp_path / f"empty.{suffix}"
    make().save(path, **({"transparency": 0} if name.startswith("palette") else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
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
    with warnings.catch_warnings():  # a PIL image: its pixels, and no "not writable" warning
        warnings.simplefilter("error")
        picture = Image.fromarray(as_numpy_bytes[0])
        assert torch.equal(helpers.as_image_batch(picture), batch[:1])


@pytest.mark.parametrize("change, message", [
    (lambda images: images[:, :, 2:], r"28x28 grayscale .*got shape \(2, 1, 26, 28\)"),
    # normalised, or a touch outside 0-1: the message shows the range found
    (lambda images: images - 0.01, r"values in 0-1 .*got -0\.01\.\.0\.99"),
    (lambda images: images * 1.01, r"values in 0-1 .*got 0\.\.1\.01"),
])
def test_predict_says_what_is_wrong_with_the_images(small_sets, change, message):
    _, _, test_set = small_sets
    batch = torch.stack([test_set[0][0], test_set[1][0]])
    with pytest.raises(ValueError, match=message):
        helpers.as_image_batch(change(batch))


def test_float_rounding_just_outside_0_1_is_forgiven(small_sets):
    _, _, test_set = small_sets
    image = test_set[0][0]
    assert image.min() == 0 and image.max() == 1
    nudged = image.clone()
    nudged[image == 0], nudged[image == 1] = -1e-7, 1 + 1e-7
    assert torch.equal(helpers.as_image_batch(nudged), nudged.unsqueeze(0))
