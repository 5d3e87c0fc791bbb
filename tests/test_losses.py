"""Losses: hand-computed values on 2x2 masks, the expression parser, serialisation."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from segbalance.config import LossConfig
from segbalance.errors import UserError
from segbalance.losses import LOSSES, SegmentationLoss, get_loss, parse_loss_expression

LN2 = math.log(2.0)


def mask(*values: float) -> np.ndarray:
    """A [1, 2, 2, 1] float32 tensor from 4 values in row order."""
    return np.asarray(values, np.float32).reshape(1, 2, 2, 1)


def per_sample(expression: str, y: np.ndarray, z: np.ndarray, **params: float) -> np.ndarray:
    loss = get_loss(LossConfig(name=expression, **params))
    return loss.call(tf.constant(y), tf.constant(z)).numpy()


# One foreground pixel, logits 0 everywhere: p = 0.5 at every pixel.
Y1 = mask(1, 0, 0, 0)
Z0 = mask(0, 0, 0, 0)


def test_bce_at_zero_logits_is_ln2():
    # -log(0.5) at every pixel whatever the label.
    np.testing.assert_allclose(per_sample("bce", Y1, Z0), [LN2], rtol=1e-6)


def test_dice_by_hand():
    # sum(p*y) = 0.5, sum(p) = 2, sum(y) = 1, smooth 1: 1 - (2*0.5 + 1) / (2 + 1 + 1) = 0.5
    np.testing.assert_allclose(per_sample("dice", Y1, Z0), [0.5], rtol=1e-6)


def test_dice_empty_mask_uses_smooth_term():
    empty = mask(0, 0, 0, 0)
    # nothing true, nothing predicted (p ~ 2e-9): 1 - (0 + 1) / (~0 + 0 + 1) ~ 0
    np.testing.assert_allclose(per_sample("dice", empty, mask(-20, -20, -20, -20)), [0], atol=1e-6)
    # nothing true, p = 0.5 everywhere: 1 - 1 / (2 + 0 + 1) = 2/3
    np.testing.assert_allclose(per_sample("dice", empty, Z0), [2 / 3], rtol=1e-6)


def test_focal_by_hand():
    # p_t = 0.5 everywhere, (1 - p_t)^2 = 0.25, ce = ln2.
    # foreground pixel: alpha 0.25 -> 0.25*0.25*ln2 = 0.0625 ln2; 3 background: 0.75*0.25*ln2
    # mean = (0.0625 + 3 * 0.1875) / 4 * ln2 = 0.15625 ln2
    got = per_sample("focal", Y1, Z0, focal_alpha=0.25, focal_gamma=2.0)
    np.testing.assert_allclose(got, [0.15625 * LN2], rtol=1e-6)


def test_focal_gamma_zero_alpha_half_is_half_bce():
    y, z = mask(1, 0, 1, 0), mask(2.0, -1.0, 0.3, 0.7)
    focal = per_sample("focal", y, z, focal_alpha=0.5, focal_gamma=0.0)
    np.testing.assert_allclose(focal, 0.5 * per_sample("bce", y, z), rtol=1e-6)


def test_tversky_by_hand():
    # tp = 0.5, fp = 3 * 0.5 = 1.5, fn = 0.5, smooth 1
    # 1 - (0.5 + 1) / (0.5 + 0.3*1.5 + 0.7*0.5 + 1) = 1 - 1.5 / 2.3
    got = per_sample("tversky", Y1, Z0, tversky_alpha=0.3, tversky_beta=0.7)
    np.testing.assert_allclose(got, [1 - 1.5 / 2.3], rtol=1e-6)


def test_tversky_half_half_equals_dice_without_smoothing():
    # (tp) / (tp + fp/2 + fn/2) = 2tp / (2tp + fp + fn); with smooth s the two differ
    # (s vs 2s), so compare at s = 0.
    y, z = mask(1, 0, 1, 1), mask(1.5, 0.2, -0.4, 3.0)
    tv = SegmentationLoss("tversky", tversky_alpha=0.5, tversky_beta=0.5, smooth=0.0)
    dice = SegmentationLoss("dice", smooth=0.0)
    np.testing.assert_allclose(tv.call(y, z).numpy(), dice.call(y, z).numpy(), rtol=1e-6)


def test_lovasz_by_hand():
    # y = [1,0,0,1], z = [2,-1,0.5,-0.5]; hinge errors 1 - z*(2y-1) = [-1, 0, 1.5, 1.5].
    # Sorted descending (stable): errors [1.5, 1.5, 0, -1], labels [0, 1, 0, 1].
    # Jaccard along the order: inter = 2 - cumsum = [2,1,1,0], union = 2 + cumsum(1-y) = [3,3,4,4]
    # J = 1 - inter/union = [1/3, 2/3, 3/4, 1]; gradient = [1/3, 1/3, 1/12, 1/4]
    # loss = 1.5/3 + 1.5/3 + 0 + 0 = 1.0
    got = per_sample("lovasz", mask(1, 0, 0, 1), mask(2, -1, 0.5, -0.5))
    np.testing.assert_allclose(got, [1.0], rtol=1e-6)


def test_lovasz_perfect_margin_and_empty_mask():
    # every error 1 - 2 = -1 < 0: no hinge, loss 0
    np.testing.assert_allclose(
        per_sample("lovasz", mask(1, 0, 0, 1), mask(2, -2, -2, 2)), [0.0], atol=1e-7
    )
    # empty mask: Jaccard gradient [1, 0, 0, 0], loss = largest error = 1 + 0.5
    np.testing.assert_allclose(
        per_sample("lovasz", mask(0, 0, 0, 0), mask(0.5, -1, -1, -1)), [1.5], rtol=1e-6
    )


def test_weighted_sum_by_hand():
    # 0.5 * bce + dice at p = 0.5: 0.5 ln2 + 0.5 (see the tests above)
    np.testing.assert_allclose(per_sample("0.5*bce+dice", Y1, Z0), [0.5 * LN2 + 0.5], rtol=1e-6)
    np.testing.assert_allclose(
        per_sample(" dice + focal ", Y1, Z0), [0.5 + 0.15625 * LN2], rtol=1e-6
    )


def test_per_sample_shape_and_batch_mean():
    rng = np.random.default_rng(0)
    y = (rng.random((3, 8, 8, 1)) > 0.6).astype(np.float32)
    z = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
    loss = get_loss(LossConfig(name="dice+focal+0.2*lovasz+tversky+bce"))
    values = loss.call(y, z).numpy()
    assert values.shape == (3,)
    # each sample's value depends on that sample only
    np.testing.assert_allclose(loss.call(y[1:2], z[1:2]).numpy(), values[1:2], rtol=1e-5)
    np.testing.assert_allclose(float(loss(y, z)), values.mean(), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_low_precision_logits_give_float32_finite_gradients(name):
    y = tf.constant(np.tile(mask(1, 0, 0, 1), (2, 1, 1, 1)))
    z = tf.Variable(np.tile(mask(40.0, -40.0, 40.0, -0.1), (2, 1, 1, 1)))
    with tf.GradientTape() as tape:
        out = get_loss(LossConfig(name=name)).call(y, tf.cast(z, tf.bfloat16))
    assert out.dtype == tf.float32
    grad = tape.gradient(out, z)
    assert np.isfinite(out.numpy()).all() and np.isfinite(grad.numpy()).all()


def test_parser():
    assert parse_loss_expression("dice+focal") == [(1.0, "dice"), (1.0, "focal")]
    assert parse_loss_expression("0.5*bce + 2 * Dice") == [(0.5, "bce"), (2.0, "dice")]


@pytest.mark.parametrize(
    "bad", ["dice+", "0.5*", "x*dice", "*dice", "2*3*dice", "-1*dice", "0*bce"]
)
def test_parser_names_the_bad_token(bad):
    token = bad.split("+")[-1] if bad.endswith("+") else bad
    with pytest.raises(UserError, match="bad loss term") as info:
        parse_loss_expression(bad)
    assert f"'{token}'" in str(info.value)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(UserError, match="did you mean 'dice'") as info:
        get_loss(LossConfig(name="bce+dise"))
    assert "focal, lovasz, tversky" in str(info.value)


def test_loss_works_in_graph_mode_with_a_valid_name():
    loss = get_loss(LossConfig(name="0.5*bce+dice"))
    assert loss.name == "0.5_bce_dice"
    value = tf.function(lambda y, z: loss(y, z))(tf.constant(Y1), tf.constant(Z0))
    np.testing.assert_allclose(float(value), 0.5 * LN2 + 0.5, rtol=1e-6)


def test_serialization_round_trip():
    loss = get_loss(LossConfig(name="0.5*bce+tversky", tversky_alpha=0.1, tversky_beta=0.9))
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, SegmentationLoss)
    assert again.terms == loss.terms and again.params == loss.params
    y, z = mask(1, 0, 1, 0), mask(0.2, -0.3, 1.0, 2.0)
    np.testing.assert_allclose(again.call(y, z).numpy(), loss.call(y, z).numpy())
