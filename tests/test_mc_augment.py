"""Multiclass label masks under augmentation: they stay class indices (plus the ignore index),
move with their images, and borders opened by an op are ignored, never background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from segbalance.augment_ops import (
    Affine,
    AugmentOp,
    Blur,
    Brightness,
    Contrast,
    Flip,
    Hue,
    Noise,
    Rotate,
    Saturation,
    Scale,
    Translate,
)
from segbalance.classes import IGNORE_INDEX
from segbalance.config import AugmentConfig
from segbalance.pipeline.augment import build_augmenter, build_pipeline, lift_labels, lower_labels

K = 4
SIZE = 32
FILLS = ["reflect", "wrap", "constant", "nearest"]

# One strategy per op, parameters drawn within the op's bounds (p = 1: always applied).
OP = st.one_of(
    st.sampled_from(["horizontal", "vertical", "horizontal_and_vertical"]).map(
        lambda m: Flip(mode=m)
    ),
    st.builds(
        Affine,
        scale=st.floats(0.0, 0.5),
        degrees=st.floats(0.0, 180.0),
        translate=st.floats(0.0, 0.5),
    ),
    st.builds(Rotate, degrees=st.floats(0.0, 360.0), fill_mode=st.sampled_from(FILLS)),
    st.builds(Scale, factor=st.floats(0.0, 0.9), fill_mode=st.sampled_from(FILLS)),
    st.builds(Translate, fraction=st.floats(0.0, 1.0), fill_mode=st.sampled_from(FILLS)),
    st.builds(Brightness, factor=st.floats(0.0, 1.0)),
    st.builds(Contrast, factor=st.floats(0.0, 1.0)),
    st.builds(Hue, factor=st.floats(0.0, 0.5)),
    st.builds(Saturation, factor=st.floats(0.0, 1.0)),
    st.builds(Blur, sigma=st.floats(0.1, 3.0)),
    st.builds(Noise, std=st.floats(0.0, 50.0)),
)


def _labels(rng: np.random.Generator, ignore_share: float = 0.1) -> np.ndarray:
    """f32 [H, W, 1] blocks of class indices 0..K-1 with some ignored pixels."""
    blocks = rng.integers(0, K, (SIZE // 4, SIZE // 4)).astype(np.float32)
    mask = np.kron(blocks, np.ones((4, 4), np.float32))
    mask[rng.random(mask.shape) < ignore_share] = IGNORE_INDEX
    return mask[..., None]


def _run(ops: list[AugmentOp], mask: np.ndarray, seed: int) -> np.ndarray:
    fn = build_pipeline(ops, jit=False, num_classes=K)
    image = np.repeat(mask * 20.0 % 256, 3, axis=-1)
    _, out = fn(tf.constant(image[None]), tf.constant(mask[None]), tf.constant([seed, 1]))
    return out.numpy()[0]


@settings(max_examples=40, deadline=None)
@given(op=OP, seed=st.integers(0, 2**31 - 1), mask_seed=st.integers(0, 1000))
def test_every_op_keeps_class_indices(op: AugmentOp, seed: int, mask_seed: int) -> None:
    mask = _labels(np.random.default_rng(mask_seed))
    out = _run([op], mask, seed)
    assert out.shape == mask.shape
    assert set(np.unique(out)) <= {*range(K), IGNORE_INDEX}, op


def test_default_pipeline_keeps_class_indices_compiled() -> None:
    # The XLA-compiled warp (the default affine) resamples the mask by its own gathers.
    fn = tf.function(build_pipeline([Affine(scale=0.3, degrees=90)], jit=True, num_classes=K))
    mask = _labels(np.random.default_rng(0))
    for seed in range(3):
        _, out = fn(tf.zeros((1, SIZE, SIZE, 3)), tf.constant(mask[None]), tf.constant([seed, 0]))
        assert set(np.unique(out.numpy())) <= {*range(K), IGNORE_INDEX}
        assert (out.numpy() != mask).mean() > 0.1  # it moved


def test_nearest_neighbour_only_no_value_between_classes() -> None:
    # Class 0 next to class 2: a blend would make class 1 appear on their border.
    mask = np.zeros((SIZE, SIZE, 1), np.float32)
    mask[:, SIZE // 2 :] = 2
    for op in (Affine(scale=0.3, degrees=40), Rotate(degrees=40), Scale(factor=0.4)):
        for seed in range(3):
            out = _run([op], mask, seed)
            assert 1 not in np.unique(out), op


def test_constant_fill_opens_borders_as_ignored_not_background() -> None:
    mask = np.ones((SIZE, SIZE, 1), np.float32)  # class 1 everywhere
    ops = [Rotate(degrees=45, fill_mode="constant"), Translate(fraction=0.3, fill_mode="constant")]
    filled = 0
    for seed in range(4):
        out = _run([ops[seed % 2]], mask, seed)
        assert 0 not in np.unique(out)  # the border is never the background
        filled += int((out == IGNORE_INDEX).sum())
    assert filled > 0
    # Binary masks keep filling with 0, as before.
    fn = build_pipeline([ops[0]], jit=False)
    _, out = fn(tf.zeros((1, SIZE, SIZE, 3)), tf.ones((1, SIZE, SIZE, 1)), tf.constant([0, 1]))
    assert set(np.unique(out.numpy())) == {0.0, 1.0}


def test_labels_move_with_the_image() -> None:
    rng = np.random.default_rng(3)
    mask = _labels(rng, ignore_share=0.0)
    image = np.repeat(mask * 60.0, 3, axis=-1)  # class c has gray 60 c: exact under flips
    fn = build_pipeline([Flip(mode="horizontal_and_vertical")], jit=False, num_classes=K)
    out_i, out_m = fn(tf.constant(image[None]), tf.constant(mask[None]), tf.constant([0, 0]))
    np.testing.assert_array_equal(out_m.numpy()[0], mask[::-1, ::-1])
    np.testing.assert_array_equal(out_i.numpy()[0, ..., :1] / 60.0, out_m.numpy()[0])


def test_lift_and_lower_round_trip() -> None:
    mask = np.array([0, 1, 3, IGNORE_INDEX, 7], np.float32)
    lifted = lift_labels(mask, K)
    np.testing.assert_array_equal(lifted, [1, 2, 4, 0, 0])
    np.testing.assert_array_equal(lower_labels(lifted, K), [0, 1, 3, 255, 255])
    tf_lifted = lift_labels(tf.constant(mask), K)
    np.testing.assert_array_equal(lower_labels(tf_lifted, K).numpy(), [0, 1, 3, 255, 255])


def test_augmenter_per_group_keeps_class_indices() -> None:
    rotate = {"type": "rotate", "degrees": 90, "fill_mode": "constant"}
    cfg = AugmentConfig(jit=False, groups={"1": [rotate]})
    aug = build_augmenter(cfg, ["0", "1"], num_classes=K)
    assert aug is not None
    mask = tf.constant(_labels(np.random.default_rng(5)))
    for group in (0, 1):
        _, out = aug(tf.zeros((SIZE, SIZE, 3)), mask, tf.constant(group), tf.constant([2, 3]))
        assert set(np.unique(out.numpy())) <= {*range(K), IGNORE_INDEX}


def test_albumentations_engine_keeps_class_indices(tmp_path: Path) -> None:
    A = pytest.importorskip("albumentations")
    A.save(
        A.Compose([A.HorizontalFlip(p=1.0), A.Affine(rotate=(40, 40), p=1.0)]),
        tmp_path / "a.json",
    )
    cfg = AugmentConfig(engine="albumentations", albumentations_file=str(tmp_path / "a.json"))
    aug = build_augmenter(cfg, ["0"], num_classes=K)
    assert aug is not None
    mask = np.full((SIZE, SIZE, 1), 2.0, np.float32)
    mask[0, 0] = IGNORE_INDEX
    _, out = aug(tf.zeros((SIZE, SIZE, 3)), tf.constant(mask), tf.constant(0), tf.constant([0, 1]))
    values = set(np.unique(out.numpy()))
    assert values <= {2.0, float(IGNORE_INDEX)} and IGNORE_INDEX in values  # borders ignored
