"""Optimisers and learning-rate schedules of the training loop.

Three schedules (``optimizer.schedule``):

* ``cosine``: linear warm-up over ``warmup_epochs`` then a cosine decay to ``min_lr`` at the
  last step, as a serializable :class:`WarmupCosine` driven by the optimiser's step counter
  (so a resumed run continues on the same curve);
* ``plateau``: a constant rate multiplied by ``plateau_factor`` when the monitored value did
  not improve for ``plateau_patience`` epochs (:class:`Plateau`, state kept in checkpoints);
* ``constant``.

Example:
    >>> s = WarmupCosine(1e-3, total_steps=100, warmup_steps=10, min_lr=0.0)
    >>> float(s(0)), float(s(9)), float(s(100))
    (0.0001, 0.001, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from segbalance.config import OptimizerConfig
from segbalance.errors import unknown_name_error
from segbalance.train.precision import needs_loss_scaling


@keras.saving.register_keras_serializable(package="segbalance")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``.

    Step ``s`` (0-based) of the warm-up uses ``lr * (s + 1) / warmup_steps`` so the first
    update is not wasted at a zero rate.
    """

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0):
        self.lr = float(lr)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(min(int(warmup_steps), self.total_steps), 0)
        self.min_lr = float(min_lr)

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warm = tf.cast(self.warmup_steps, tf.float32)
        decay_steps = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        warm_lr = self.lr * (step + 1.0) / tf.maximum(warm, 1.0)
        progress = tf.clip_by_value((step - warm) / decay_steps, 0.0, 1.0)
        cos_lr = self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < warm, warm_lr, cos_lr)

    def get_config(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr": self.min_lr,
        }


@dataclass
class Plateau:
    """Reduce-on-plateau bookkeeping; the loop stores its fields in checkpoints.

    Attributes:
        factor: multiplier applied to the rate after ``patience`` epochs without progress.
        patience: epochs without improvement before reducing.
        min_lr: floor of the rate.
        mode: ``max`` (IoU-like monitors) or ``min`` (losses).
        best: best monitored value so far (None before the first epoch).
        wait: epochs since the last improvement.
    """

    factor: float
    patience: int
    min_lr: float
    mode: str = "max"
    best: float | None = None
    wait: int = 0

    def step(self, value: float, lr: float) -> float:
        """Feed one epoch's monitored value; returns the rate for the next epoch."""
        if self.best is None or _improved(value, self.best, self.mode):
            self.best, self.wait = value, 0
            return lr
        self.wait += 1
        if self.wait >= self.patience:
            self.wait = 0
            return max(lr * self.factor, self.min_lr)
        return lr


def _improved(value: float, best: float, mode: str) -> bool:
    return value > best if mode == "max" else value < best


def build_schedule(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int) -> Any:
    """The ``learning_rate`` argument of the optimiser: a schedule or a float."""
    if cfg.schedule == "cosine":
        return WarmupCosine(
            cfg.lr,
            total_steps=steps_per_epoch * epochs,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            min_lr=cfg.min_lr,
        )
    if cfg.schedule in ("plateau", "constant"):
        return float(cfg.lr)
    raise unknown_name_error("schedule", cfg.schedule, ["cosine", "plateau", "constant"])


def build_optimizer(
    cfg: OptimizerConfig, steps_per_epoch: int, epochs: int, policy: str
) -> keras.optimizers.Optimizer:
    """AdamW (default), Adam or SGD with momentum, clipnorm, and loss scaling for float16.

    Create it inside ``strategy.scope()`` so its variables are mirrored.
    """
    lr = build_schedule(cfg, steps_per_epoch, epochs)
    common: dict[str, Any] = {"learning_rate": lr, "clipnorm": cfg.clipnorm}
    opt: keras.optimizers.Optimizer
    if cfg.name == "adamw":
        opt = keras.optimizers.AdamW(weight_decay=cfg.weight_decay, **common)
    elif cfg.name == "adam":
        opt = keras.optimizers.Adam(**common)
    elif cfg.name == "sgd":
        opt = keras.optimizers.SGD(momentum=0.9, nesterov=True, **common)
    else:
        raise unknown_name_error("optimizer", cfg.name, ["adamw", "adam", "sgd"])
    if needs_loss_scaling(policy):
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def inner_optimizer(opt: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimiser that updates variables (unwraps loss scaling)."""
    return getattr(opt, "inner_optimizer", opt)


def current_lr(opt: keras.optimizers.Optimizer) -> float:
    """The rate the next step uses (Keras evaluates a schedule at the current step)."""
    rate = keras.ops.convert_to_tensor(inner_optimizer(opt).learning_rate)
    return float(keras.ops.convert_to_numpy(rate))


def set_lr(opt: keras.optimizers.Optimizer, value: float) -> None:
    """Set a constant rate (plateau schedule); the optimiser keeps it in a variable."""
    inner_optimizer(opt).learning_rate = float(value)
