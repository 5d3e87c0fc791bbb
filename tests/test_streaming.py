"""The streaming path's fast decode: same masks as the reference rule, bounded image error."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.config import AugmentConfig
from segbalance.data.manifest import Manifest
from segbalance.data.mask_planes import PLANES
from segbalance.pipeline import build_train_dataset
from segbalance.pipeline.decode import apply_mask_rule, decode_pair, jpeg_ratios

RNG = np.random.default_rng(0)
SIZE = (32, 32)


def _reference_rule(unit: np.ndarray, rule: str) -> np.ndarray:
    """The rule as written before the fast path: all five planes built, one picked."""
    rgb = np.repeat(unit[..., :1], 3, -1) if unit.shape[-1] < 3 else unit[..., :3]
    even = unit.shape[-1] % 2 == 0
    alpha = unit[..., -1:] if even else np.full_like(unit[..., :1], 255.0)
    planes = np.concatenate([rgb, alpha, rgb.max(-1, keepdims=True)], -1)
    name, threshold = rule.split(">")
    channel = (0, 0, 1, 2, 3, 4)[PLANES.index(name)]
    return (planes[..., channel : channel + 1] > float(threshold)).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_mask_rule_matches_the_five_plane_reference(channels: int) -> None:
    unit = RNG.integers(0, 256, (9, 7, channels)).astype(np.float32)
    for plane in PLANES:
        for threshold in ("0", "100.5", "254"):
            rule = f"{plane}>{threshold}"
            out = apply_mask_rule(tf.constant(unit), rule).numpy()
            np.testing.assert_array_equal(out, _reference_rule(unit, rule), err_msg=rule)


@pytest.mark.parametrize("legacy", ["0/255", "0/1", "rgb-nonblack", ""])
def test_legacy_rules_are_any_above_zero(legacy: str) -> None:
    unit = RNG.integers(0, 3, (5, 6, 3)).astype(np.float32)
    out = apply_mask_rule(tf.constant(unit), legacy).numpy()
    np.testing.assert_array_equal(out, _reference_rule(unit, "any>0"))


def test_jpeg_ratios_start_at_twice_the_training_size() -> None:
    heights = np.array([63, 64, 64, 128, 300, 0])
    widths = np.array([64, 63, 64, 128, 999, 0])
    ratios = jpeg_ratios(heights, widths, (32, 32))
    np.testing.assert_array_equal(ratios, [1, 1, 2, 4, 8, 1])


def _photo(size: int) -> np.ndarray:
    """A smooth picture with a few sharp edges, as photos have."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([200 * x, 180 * y, 120 + 60 * np.sin(6 * x + 4 * y)], -1)
    base[size // 4 : size // 2, size // 3 : 2 * size // 3] = (250, 30, 60)
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """JPEG images at 4x, 2x and 1.9x the training size, a PNG at 4x; PNG masks."""
    root = tmp_path_factory.mktemp("stream")
    names, sizes = ["a.jpg", "b.jpg", "c.jpg", "d.png"], [128, 64, 61, 128]
    for name, side in zip(names, sizes, strict=True):
        Image.fromarray(_photo(side)).save(root / name, quality=90)
        Image.fromarray(((_photo(side)[..., 0] > 100) * 255).astype(np.uint8)).save(
            root / f"m_{name}.png"
        )
    n = len(names)
    return Manifest(
        root=root,
        image=names,
        mask=[f"m_{name}.png" for name in names],
        group=["g"] * n,
        split=["train"] * n,
        height=sizes,
        width=sizes,
        coverage=[0.0] * n,
        mask_rule=["0/255"] * n,
    )


def test_streamed_jpegs_are_close_to_full_decode_and_masks_exact(rows: Manifest) -> None:
    """The documented tolerance: mean < 2 and 90 % of values within 4 grey levels.

    A few pixels along sharp, saturated edges differ more (up to ~30 here: JPEG's
    half-resolution colour planes are scaled differently); masks are exact.
    """
    idx = np.arange(len(rows))
    ds = build_train_dataset(
        rows,
        idx,
        idx,
        image_size=SIZE,
        batch_size=4,
        augment=AugmentConfig(engine="none"),
        seed=0,
        epoch=0,
    )
    batch = next(iter(ds))
    for i, (image, mask) in enumerate(zip(rows.image_paths(), rows.mask_paths(), strict=True)):
        full_image, full_mask = decode_pair(tf.constant(str(image)), tf.constant(str(mask)), SIZE)
        np.testing.assert_array_equal(batch["mask"][i], full_mask)
        diff = np.abs(batch["image"][i].numpy() - full_image.numpy())
        if i in (0, 1):  # JPEG >= 2x: reduced-scale decode
            assert diff.mean() < 2 and np.percentile(diff, 90) < 4, (i, diff.mean())
        else:  # under 2x, or not a JPEG: the full decode, rounded to uint8 as the cache is
            np.testing.assert_array_equal(batch["image"][i], np.rint(full_image.numpy()), str(i))
