"""The ModelCard (JSON, versioned, strict on bad input) and the preprocessing it drives, on exact values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from toolkit.card import CARD_FORMAT_VERSION, InputSpec, ModelCard
from toolkit.errors import BadInputError
from toolkit.preprocess import conform_pixels, convert_image, normalize, prepare_batch

GREY = InputSpec(channels=1, height=2, width=2, mean=[0.5], std=[0.5])
RGB = InputSpec(channels=3, height=2, width=2, mean=[0.0, 0.5, 1.0], std=[1.0, 0.5, 0.25])
CROP = InputSpec(1, 16, 24, [0.5], [0.25], resize="center_crop", resize_size=28)


def make_card() -> ModelCard:
    return ModelCard(
        model="resnet20",
        model_args={"in_channels": 1, "num_classes": 3},
        class_names=["a", "b", "c"],
        input=InputSpec(channels=1, height=28, width=28, mean=[0.1311], std=[0.3083]),
        dataset="mnist5k",
        training={"epochs": 2},
        metrics={"test_accuracy": 0.9},
        versions={"torch": "2.14.1"},
    )


def test_card_json_round_trip():
    card = make_card()
    text = card.to_json()
    data = json.loads(text)
    assert data["format_version"] == CARD_FORMAT_VERSION and data["num_classes"] == 3
    assert data["input"] == {
        "channels": 1,
        "height": 28,
        "width": 28,
        "mean": [0.1311],
        "std": [0.3083],
        "color": "L",
        "layout": "NCHW",
        "dtype": "float32",
        "scale": 1 / 255,
        "resize": "stretch",
        "resize_size": None,
    }
    again = ModelCard.from_json(text)
    assert again == card and again.num_classes == 3
    assert ModelCard.from_json(text.encode()) == card
    assert RGB.color == "RGB" and RGB.shape == (3, 2, 2) and GREY.color == "L"


def broken(path: str, value) -> str:
    """The card's JSON with one field replaced (or removed, when value is ...)."""
    data = make_card().to_dict()
    *parents, key = path.split(".")
    target = data
    for p in parents:
        target = target[p]
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ("{}", "malformed"),
        (broken("model", ...), "malformed"),
        (broken("input", ...), "malformed"),
        (broken("input", [1, 28, 28]), "malformed"),
        (broken("input.channels", "one"), "malformed"),
        (broken("input.channels", 2), "1 or 3 channels"),
        (broken("input.height", 0), "positive size"),
        (broken("input.mean", [0.1, 0.2]), "mean/std length"),
        (broken("input.std", [0.0]), "std values must be positive"),
        (broken("class_names", "abc"), "class_names must be a non-empty list"),
        (broken("class_names", []), "class_names must be a non-empty list"),
        (broken("model_args", ["in_channels"]), "model_args must be an object"),
        (broken("input.resize", "fit"), "resize must be one of stretch, center_crop"),
        (broken("input.resize_size", 40), "resize_size goes with resize center_crop"),
        (broken("input", CROP.to_dict() | {"resize_size": 20}), "from 24 \\(the longer input side"),
        (broken("input", CROP.to_dict() | {"resize_size": None}), "resize_size must be a whole number"),
        (broken("format_version", "two"), "malformed"),
        (broken("format_version", CARD_FORMAT_VERSION + 1), "newer than this rtool understands"),
    ],
)
def test_malformed_cards_are_bad_input(text, words):
    with pytest.raises(BadInputError, match=words) as error:
        ModelCard.from_json(text)
    assert "\n" not in str(error.value)


def test_card_without_format_version_reads_as_the_current_one():
    assert ModelCard.from_json(broken("format_version", ...)).format_version == CARD_FORMAT_VERSION


def test_a_format_1_card_reads_as_stretch_and_a_crop_card_round_trips():
    old = json.loads(broken("format_version", 1))
    for key in ("resize", "resize_size"):
        del old["input"][key]
    assert ModelCard.from_dict(old).input.resize == "stretch"
    crop = ModelCard.from_json(broken("input", CROP.to_dict())).input
    assert crop == CROP and crop.resize_size == 28


# ---------------------------------------------------------------- preprocessing


def test_convert_image_grey_to_rgb_copies_the_channel():
    image = Image.fromarray(np.array([[0, 128], [255, 7]], dtype=np.uint8))
    out = convert_image(image, RGB)
    assert out.dtype == np.uint8 and out.shape == (3, 2, 2)
    assert out.tolist() == [[[0, 128], [255, 7]]] * 3


def test_convert_image_rgb_to_grey_uses_itu_r_601_luma():
    pixels = np.zeros((1, 3, 3), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1], pixels[0, 2] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    spec = InputSpec(channels=1, height=1, width=3, mean=[0.0], std=[1.0])
    out = convert_image(Image.fromarray(pixels), spec)
    assert out.tolist() == [[[76, 150, 29]]]  # L = 0.299 R + 0.587 G + 0.114 B, rounded


def test_convert_image_resizes_bilinear_with_antialias():
    """4x4 halves of 0 and 175 shrink to 2x2: triangle weights 0.75, 0.75, 0.25 give 25 and 150."""
    image = Image.fromarray(np.array([[0, 0, 175, 175]] * 4, dtype=np.uint8))
    assert convert_image(image, GREY).tolist() == [[[25, 150], [25, 150]]]
    constant = Image.fromarray(np.full((3, 5, 3), 42, dtype=np.uint8))
    big = InputSpec(channels=3, height=7, width=9, mean=[0, 0, 0], std=[1, 1, 1])
    assert np.all(convert_image(constant, big) == 42) and convert_image(constant, big).shape == (3, 7, 9)


@pytest.mark.parametrize("size", [(40, 30), (30, 40), (57, 29), (24, 16), (23, 60), (200, 201), (5, 3)])
@pytest.mark.parametrize("spec", [CROP, InputSpec(3, 32, 32, [0.5] * 3, [0.25] * 3, "center_crop", 37)])
def test_center_crop_equals_torchvisions_resize_and_center_crop(size, spec):
    """Geometry and pixels, value for value: odd margins (rounded half to even), shrinking and enlarging."""
    from torchvision.transforms import v2

    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(spec.color)
    expected = v2.Compose([v2.Resize(spec.resize_size), v2.CenterCrop((spec.height, spec.width))])(image)
    ours = convert_image(image, spec)
    assert ours.shape == spec.shape
    assert np.array_equal(ours, np.asarray(expected).reshape(spec.height, spec.width, -1).transpose(2, 0, 1))


def test_center_crop_keeps_the_aspect_where_stretch_does_not():
    """A 60x20 picture: a white middle half between black quarters. Cropped, the centre is all white."""
    pixels = np.zeros((20, 60), dtype=np.uint8)
    pixels[:, 15:45] = 255
    crop = InputSpec(1, 8, 8, [0.0], [1.0], resize="center_crop", resize_size=8)
    assert np.all(convert_image(Image.fromarray(pixels), crop) == 255)
    stretched = convert_image(Image.fromarray(pixels), InputSpec(1, 8, 8, [0.0], [1.0]))
    assert stretched[0, :, 0].max() == 0  # squeezed: the black sides still show


def test_convert_image_drops_alpha_and_palettes():
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8), mode="RGBA")
    spec = InputSpec(channels=3, height=1, width=2, mean=[0, 0, 0], std=[1, 1, 1])
    assert convert_image(rgba, spec)[:, 0, :].T.tolist() == [[10, 20, 30], [40, 50, 60]]
    palette = rgba.convert("RGB").convert("P")
    assert convert_image(palette, spec).shape == (3, 1, 2)


def test_conform_pixels_passes_matching_arrays_through_without_a_copy():
    pixels = np.zeros((2, 1, 2, 2), dtype=np.uint8)
    assert conform_pixels(pixels, GREY) is pixels


def test_conform_pixels_converts_channels_and_size():
    rgb = np.zeros((3, 3, 1, 1), dtype=np.uint8)
    rgb[0, 0], rgb[1, 1], rgb[2, 2] = 255, 255, 255  # red, green, blue images
    grey = conform_pixels(rgb, InputSpec(channels=1, height=1, width=1, mean=[0.0], std=[1.0]))
    assert grey.shape == (3, 1, 1, 1) and grey.ravel().tolist() == [76, 150, 29]

    halves = np.array([[[[0, 0, 175, 175]] * 4]], dtype=np.uint8)  # (1, 1, 4, 4)
    assert conform_pixels(halves, GREY).tolist() == [[[[25, 150], [25, 150]]]]
    both = conform_pixels(halves, RGB)
    assert both.shape == (1, 3, 2, 2) and all(both[0, c].tolist() == [[25, 150], [25, 150]] for c in range(3))


@pytest.mark.parametrize("shape", [(1, 4, 4), (1, 2, 4, 4), (1, 4, 4, 4)])
def test_conform_pixels_refuses_other_shapes(shape):
    with pytest.raises(ValueError, match="1 or 3 channels"):
        conform_pixels(np.zeros(shape, dtype=np.uint8), GREY)


def test_normalize_is_pixels_over_255_minus_mean_over_std():
    pixels = np.array([[[[0, 255], [51, 102]]]], dtype=np.uint8)
    out = normalize(pixels, GREY)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[[[-1.0, 1.0], [-0.6, -0.2]]]], rtol=0, atol=1e-6)
    rgb = np.full((1, 3, 2, 2), 255, dtype=np.uint8)
    np.testing.assert_allclose(normalize(rgb, RGB)[0, :, 0, 0], [1.0, 1.0, 0.0], atol=1e-6)


def test_prepare_batch_converts_then_normalizes():
    rgb = np.zeros((1, 3, 4, 4), dtype=np.uint8)
    rgb[0, 0] = 255  # a red image
    out = prepare_batch(rgb, GREY)
    assert out.shape == (1, 1, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.full((1, 1, 2, 2), (76 / 255 - 0.5) / 0.5, dtype=np.float32), atol=1e-6)
