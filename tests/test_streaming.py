"""The streaming path's fast decode: same masks as the reference rule, bounded image error."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from segbalance.data.mask_planes import PLANES
from segbalance.pipeline.decode import apply_mask_rule

RNG = np.random.default_rng(0)


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
