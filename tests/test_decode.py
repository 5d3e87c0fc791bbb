"""The one decode path: formats, bit depths, channel layouts, mask rule, resize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.errors import UserError
from segbalance.pipeline.decode import (
    decode_image,
    decode_mask,
    decode_pair,
    load_image,
    preprocess_for_model,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)


def _img(path: Path) -> np.ndarray:
    return decode_image(tf.constant(str(path))).numpy()


def _mask(path: Path) -> np.ndarray:
    return decode_mask(tf.constant(str(path))).numpy()


@pytest.mark.parametrize("ext", ["png", "bmp", "tif"])
def test_lossless_rgb_8bit_is_exact_in_0_255(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"a.{ext}"
    Image.fromarray(RGB).save(path)
    out = _img(path)
    assert out.dtype == np.float32 and out.shape == (12, 10, 3)
    np.testing.assert_allclose(out, RGB.astype(np.float32), atol=1e-3)


def test_jpeg_decodes_close_to_source(tmp_path: Path) -> None:
    flat = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    Image.fromarray(flat).save(tmp_path / "a.jpg", quality=95)
    out = _img(tmp_path / "a.jpg")
    assert out.shape == (16, 16, 3)
    assert np.abs(out - flat).max() < 6


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_gray_keeps_scale_and_becomes_rgb(tmp_path: Path, ext: str) -> None:
    gray16 = np.array([[0, 257, 65535, 32896]], np.uint16)  # 0, 1, 255, 128 in 8-bit terms
    Image.fromarray(gray16).save(tmp_path / f"g.{ext}")
    out = _img(tmp_path / f"g.{ext}")
    assert out.shape == (1, 4, 3)
    np.testing.assert_allclose(out[0, :, 0], [0, 1, 255, 128], atol=1e-3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_16bit_rgb_png(tmp_path: Path) -> None:
    # PIL cannot write 16-bit RGB; a raw 16-bit RGB PNG via tf's encoder.
    rgb16 = RGB.astype(np.uint16) * 257
    tf.io.write_file(str(tmp_path / "c.png"), tf.io.encode_png(tf.constant(rgb16)))
    np.testing.assert_allclose(_img(tmp_path / "c.png"), RGB, atol=1e-3)


def test_gray_rgba_and_palette_images_become_rgb(tmp_path: Path) -> None:
    Image.fromarray(RGB[..., 0]).save(tmp_path / "gray.png")
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    pal = Image.fromarray((RGB[..., 0] > 127).astype(np.uint8), mode="P")
    pal.putpalette([10, 20, 30, 250, 0, 5])
    pal.save(tmp_path / "pal.png")

    np.testing.assert_array_equal(_img(tmp_path / "gray.png"), np.repeat(RGB[..., :1], 3, -1))
    np.testing.assert_array_equal(_img(tmp_path / "rgba.png"), RGB)  # alpha dropped
    expect = np.where((RGB[..., :1] > 127), [250, 0, 5], [10, 20, 30])
    np.testing.assert_array_equal(_img(tmp_path / "pal.png"), expect)


def test_mask_encodings_binarise_by_any_channel_above_zero(tmp_path: Path) -> None:
    fg = RNG.random((12, 10)) > 0.5
    Image.fromarray((fg * 255).astype(np.uint8)).save(tmp_path / "m255.png")
    Image.fromarray(fg.astype(np.uint8)).save(tmp_path / "m01.png")
    Image.fromarray(fg.astype(np.uint16)).save(tmp_path / "m16.png")  # 1 of 65535
    rgb = np.zeros((12, 10, 3), np.uint8)
    rgb[fg] = (0, 0, 3)  # only the blue channel is non-zero
    Image.fromarray(rgb).save(tmp_path / "mrgb.png")
    Image.fromarray(rgb).save(tmp_path / "mrgb.bmp")
    pal = Image.fromarray(fg.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 0, 128, 0])
    pal.save(tmp_path / "mpal.png")
    for name in ["m255.png", "m01.png", "m16.png", "mrgb.png", "mrgb.bmp", "mpal.png"]:
        out = _mask(tmp_path / name)
        assert out.shape == (12, 10, 1), name
        np.testing.assert_array_equal(out[..., 0], fg.astype(np.float32), err_msg=name)


@pytest.mark.parametrize("rule", ["0/255", "0/1", "palette-nonblack", "rgb-nonblack", ""])
def test_legacy_rule_names_mean_any_channel_above_zero(tmp_path: Path, rule: str) -> None:
    # manifests written before the rule grammar keep their meaning
    rgb = np.zeros((6, 5, 3), np.uint8)
    rgb[2:4, 1:3] = (0, 0, 3)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    out = decode_mask(tf.constant(str(tmp_path / "m.png")), rule).numpy()[..., 0]
    np.testing.assert_array_equal(out, (rgb.max(axis=2) > 0).astype(np.float32))


def test_plane_rules_pick_their_channel_and_threshold(tmp_path: Path) -> None:
    rgba = RNG.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "m.png")
    Image.fromarray(rgba).save(tmp_path / "m.tif")
    planes = {"red": 0, "green": 1, "blue": 2, "alpha": 3}
    for name in ("m.png", "m.tif"):
        for plane, i in planes.items():
            out = decode_mask(tf.constant(str(tmp_path / name)), f"{plane}>100.5").numpy()
            np.testing.assert_array_equal(out[..., 0], rgba[..., i] > 100.5, err_msg=plane)
        out = decode_mask(tf.constant(str(tmp_path / name)), "any>200").numpy()
        np.testing.assert_array_equal(out[..., 0], rgba[..., :3].max(axis=2) > 200)


def test_gray_rules_on_16_bit_use_the_0_255_scale(tmp_path: Path) -> None:
    gray16 = np.array([[0, 257 * 127, 257 * 128, 65535]], np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g.png")
    out = decode_mask(tf.constant(str(tmp_path / "g.png")), "gray>127").numpy()
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 1])


def test_mask_jpeg_decodes_as_pil_does(tmp_path: Path) -> None:
    # prepare's PIL check and training must see the same values for thresholds to agree
    noisy = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "m.jpg", quality=70)
    pil = np.asarray(Image.open(tmp_path / "m.jpg"))
    for t in (50, 127, 200):
        out = decode_mask(tf.constant(str(tmp_path / "m.jpg")), f"green>{t}").numpy()
        np.testing.assert_array_equal(out[..., 0], pil[..., 1] > t)


def test_palette_transparency_is_alpha(tmp_path: Path) -> None:
    # libpng expands a tRNS into alpha; prepare's planes do the same (PIL convert RGBA)
    fg = RNG.random((8, 8)) > 0.5
    pal = Image.fromarray(fg.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 9, 9, 9])
    pal.save(tmp_path / "p.png", transparency=0)
    out = decode_mask(tf.constant(str(tmp_path / "p.png")), "alpha>0").numpy()
    np.testing.assert_array_equal(out[..., 0], fg.astype(np.float32))


def test_unknown_rule_fails_in_the_graph(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown mask rule"):
        decode_mask(tf.constant(str(tmp_path / "m.png")), "purple>3")


@pytest.mark.parametrize(
    ("name", "mode", "rule"),
    [
        ("m.png", "L", "gray>100"),
        ("m.png", "RGBA", "alpha>60"),
        ("m.png", "I;16", "gray>127.5"),
        ("m.jpg", "RGB", "green>90"),
        ("m.tif", "RGB", "any>200"),
    ],
)
@pytest.mark.parametrize("size", [(9, 7), (40, 52), (24, 30)])
def test_mask_resized_before_its_rule_equals_rule_then_resize(
    tmp_path: Path, name: str, mode: str, rule: str, size: tuple[int, int]
) -> None:
    """The decoder resizes a mask (nearest) before binarising it: the very same pixels."""
    rng = np.random.default_rng(3)
    if mode == "I;16":
        pixels = rng.integers(0, 65536, (24, 30), dtype=np.uint16)
    else:
        channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (24, 30, channels), dtype=np.uint8).squeeze()
    Image.fromarray(pixels).save(tmp_path / name)
    path = tf.constant(str(tmp_path / name))
    full = decode_mask(path, rule)
    expected = tf.image.resize(full, size, method="nearest").numpy()
    out = decode_mask(path, rule, size=size).numpy()
    assert out.shape == (*size, 1) and 0 < out.mean() < 1
    np.testing.assert_array_equal(out, expected)


def test_resize_mask_nearest_stays_binary_and_image_bilinear(tmp_path: Path) -> None:
    # A left half/right half split that stays at the same place after resizing.
    mask = np.zeros((40, 48), np.uint8)
    mask[:, 24:] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    image = np.zeros((40, 48, 3), np.uint8)
    image[:, 24:] = 200
    Image.fromarray(image).save(tmp_path / "i.png")
    img, msk = decode_pair(
        tf.constant(str(tmp_path / "i.png")), tf.constant(str(tmp_path / "m.png")), (32, 64)
    )
    img, msk = img.numpy(), msk.numpy()
    assert img.shape == (32, 64, 3) and msk.shape == (32, 64, 1)
    assert set(np.unique(msk)) == {0.0, 1.0}
    np.testing.assert_array_equal(msk[:, :32, 0], 0)
    np.testing.assert_array_equal(msk[:, 32:, 0], 1)
    # Bilinear: the edge is blended, far from it the values are exact.
    assert 0 < img[0, 31, 0] < 200 or 0 < img[0, 32, 0] < 200
    np.testing.assert_allclose(img[:, :28], 0, atol=1e-3)
    np.testing.assert_allclose(img[:, 36:], 200, atol=1e-3)


def test_load_image_and_preprocess_match_the_training_resize(tmp_path: Path) -> None:
    big = RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "x.png")
    Image.fromarray(np.zeros((50, 70), np.uint8)).save(tmp_path / "xm.png")
    loaded = load_image(tmp_path / "x.png")
    assert loaded.dtype == np.uint8 and loaded.shape == (50, 70, 3)
    np.testing.assert_array_equal(loaded, big)
    pre = preprocess_for_model(loaded, (32, 32))
    train_img, _ = decode_pair(
        tf.constant(str(tmp_path / "x.png")), tf.constant(str(tmp_path / "xm.png")), (32, 32)
    )
    assert pre.dtype == np.float32 and pre.shape == (32, 32, 3)
    np.testing.assert_allclose(pre, train_img.numpy(), atol=1e-3)
    batch = preprocess_for_model(np.stack([loaded, loaded]), (64, 32))
    assert batch.shape == (2, 64, 32, 3)


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="junk.png"):
        load_image(tmp_path / "junk.png")
