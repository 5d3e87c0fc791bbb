"""XLA (``train.jit_compile``): what ``auto`` picks, and jitted steps compute what plain ones do."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from segbalance.config import LossConfig, OptimizerConfig, load_config
from segbalance.errors import UserError
from segbalance.losses import get_loss
from segbalance.train import precision, schedule, steps


@pytest.mark.parametrize(
    ("requested", "has_gpu", "expected"),
    [("auto", True, True), ("auto", False, False), (True, False, True), (False, True, False)],
)
def test_auto_is_on_with_a_gpu_only(requested: str | bool, has_gpu: bool, expected: bool) -> None:
    assert precision.resolve_jit(requested, has_gpu=has_gpu) is expected
    assert precision.resolve_jit(requested, has_gpu=lambda: has_gpu) is expected


def test_several_replicas_run_without_xla() -> None:
    # Synchronized batch norm is a collective; it cannot sit inside the nested XLA function.
    for requested in ("auto", True):
        assert precision.resolve_jit(requested, has_gpu=True, replicas=2) is False
    assert "2 replicas" in precision.describe_jit(False, True, replicas=2)
    assert precision.describe_jit(False, False, replicas=2) == "jit_compile off"


def test_auto_is_off_on_this_cpu() -> None:
    # CUDA_VISIBLE_DEVICES="" (conftest): the device list has no GPU.
    assert precision.resolve_jit("auto") is False
    assert "off (auto: no GPU)" in precision.describe_jit(False, "auto")
    assert precision.describe_jit(True, True) == "jit_compile on"


def test_the_config_key() -> None:
    assert load_config(None).train.jit_compile == "auto"
    assert load_config(None, {"train.jit_compile": True}).train.jit_compile is True
    assert load_config(None, {"train.jit_compile": "false"}).train.jit_compile is False
    with pytest.raises(UserError, match="jit_compile"):
        load_config(None, {"train.jit_compile": "sometimes"})
    with pytest.raises(UserError, match="sometimes"):
        precision.resolve_jit("sometimes")


def _model_and_step(jit: bool) -> tuple[keras.Model, object, object]:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(x))
    opt = schedule.build_optimizer(OptimizerConfig(lr=0.01), 10, 1, "float32")
    opt.build(model.trainable_variables)
    steps.own_gradient_reduction(opt)
    loss_fn = get_loss(LossConfig(name="bce+dice"))
    strategy = tf.distribute.get_strategy()
    train = steps.make_train_step(strategy, model, opt, loss_fn, 4, 0.5, 2, jit_compile=jit)
    evals = steps.make_eval_step(strategy, model, loss_fn, 2, 0.5, 3, jit_compile=jit)
    return model, train, evals


def _batch() -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(0, 255, (4, 32, 32, 3)), tf.float32)
    return {
        "image": image,
        "mask": tf.cast(image[..., :1] > 127, tf.float32),
        "group": tf.constant([0, 1, 1, 0], tf.int64),
        "index": tf.constant([0, 1, 2, 3], tf.int64),  # row 3 is padding (real_rows 3)
    }


def test_a_jitted_step_computes_the_plain_step() -> None:
    batch = _batch()
    results = {}
    for jit in (False, True):
        model, train, evals = _model_and_step(jit)
        out = [[t.numpy() for t in train(batch)] for _ in range(3)]
        results[jit] = (out, [t.numpy() for t in evals(batch)], model.get_weights())
    (plain, plain_eval, plain_w), (jitted, jit_eval, jit_w) = results[False], results[True]
    for a, b in zip(plain, jitted, strict=True):  # loss, counts, per-group loss sums
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-3)
    assert plain[0][0] != plain[2][0]  # it trained
    for x, y in zip(plain_eval, jit_eval, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-3)
    for x, y in zip(plain_w, jit_w, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)
