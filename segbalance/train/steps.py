"""The compiled pieces of the loop: distributed datasets, train step, validation step.

Everything runs through ``strategy.run`` so one code path serves the default strategy, a
``MirroredStrategy`` and a ``MultiWorkerMirroredStrategy``.

Gradients are all-reduced here, before clipping, and the optimiser's own all-reduce is
switched off (:func:`own_gradient_reduction`): Keras 3 clips each replica's partial gradient
before it sums them, so ``clipnorm`` would act on a different vector with 2 replicas than
with 1. Reducing first makes a replicated step compute exactly the single-device update.

Validation pads its rows to whole global batches; padded rows carry a local index past the
real rows and fall into a spare segment, so every replica runs the same number of steps (no
hang on uneven shards) and per-group counts are exact sums. Every sum is reduced (SUM)
over replicas and, under MultiWorkerMirroredStrategy, over workers before it leaves the
step, so every worker holds the same per-group numbers (adaptive balancing relies on it to
compute the same weights everywhere).

With ``augment.device: accelerator`` the train step augments each replica's share of the
batch before its forward pass (:mod:`segbalance.pipeline.deferred`), outside the step's own
XLA program: the op chains compile as ``augment.jit`` says, so they draw the numbers the
pipeline would. Validation is never augmented.

Multiclass runs (``multiclass=True``: K softmax channels, masks of class indices) count per
class: a step's counts are ``[K, 4]`` and validation's ``[G, K, 4]``
(:func:`segbalance.metrics.class_confusion_counts`); binary ones keep ``[4]`` and ``[G, 4]``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from segbalance.config import Config
from segbalance.data.manifest import Manifest
from segbalance.losses import get_loss
from segbalance.metrics import (
    GroupMetrics,
    class_confusion_counts,
    confusion_counts,
    metrics_from_counts,
    summary_metrics,
)
from segbalance.models import build_model
from segbalance.pipeline.cache import DecodedCache
from segbalance.pipeline.dataset import build_eval_dataset, build_train_dataset
from segbalance.pipeline.deferred import BatchFn
from segbalance.train import schedule

SUM = tf.distribute.ReduceOp.SUM


def batch_counts(mask: Any, logits: Any, threshold: float, multiclass: bool) -> tf.Tensor:
    """Per-sample counts: [B, 4] at ``threshold`` (binary) or [B, K, 4] by argmax."""
    if multiclass:
        return class_confusion_counts(mask, logits)
    return confusion_counts(mask, logits, threshold)


def own_gradient_reduction(optimizer: Any) -> None:
    """Make the optimiser apply gradients as given (this module all-reduces them first)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    # Instance attribute shadows the method of keras' TensorFlowOptimizer (Keras 3.x).
    inner._all_reduce_sum_gradients = lambda grads_and_vars: list(grads_and_vars)


def train_dataset(
    strategy: tf.distribute.Strategy,
    reads: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    cfg: Config,
    train: Manifest,
    epoch: int,
    sample_weights: np.ndarray | None,
    cache: DecodedCache | None = None,
    defer_augment: bool = False,
) -> Any:
    """Epoch ``epoch`` as a distributed dataset: each input pipeline reads its share.

    Args:
        reads: ``(pipelines, pipeline) -> (plan positions, row indices)`` of that input
            pipeline (:meth:`segbalance.train.trainer.Trainer.epoch_reads`).
        defer_augment: the train step augments (uint8 pixels and seeds in the batches).
    """
    B = cfg.train.batch_size

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        positions, indices = reads(ctx.num_input_pipelines, ctx.input_pipeline_id)
        return build_train_dataset(
            train,
            indices,
            positions,
            image_size=cfg.data.image_size,
            batch_size=ctx.get_per_replica_batch_size(B),
            augment=cfg.augment,
            seed=cfg.train.seed,
            epoch=epoch,
            sample_weights=sample_weights,
            cache=cache,
            defer_augment=defer_augment,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def eval_dataset(
    strategy: tf.distribute.Strategy,
    valid: Manifest,
    image_size: Sequence[int],
    batch: int,
    worker: tuple[int, int] = (0, 1),
    cache: bool = False,
) -> tuple[Any, int, int]:
    """The validation rows padded to whole global batches, split over the workers.

    Args:
        worker: (this worker's index, number of workers).
        cache: keep each worker's decoded rows in memory after the first pass.

    Returns:
        (distributed dataset, steps per pass, real rows in this worker's chunk).
    """
    n = len(valid)
    index, workers = worker
    padded_len = math.ceil(n / batch) * batch
    rows = np.concatenate([np.arange(n), np.arange(padded_len - n) % n]).astype(np.int64)
    chunk = padded_len // workers

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        w = ctx.input_pipeline_id
        mine = valid.take(rows[w * chunk : (w + 1) * chunk])
        size = ctx.get_per_replica_batch_size(batch)
        return build_eval_dataset(mine, image_size=image_size, batch_size=size, cache=cache)

    ds = strategy.distribute_datasets_from_function(dataset_fn)
    return ds, padded_len // batch, int(np.clip(n - index * chunk, 0, chunk))


def make_train_step(
    strategy: tf.distribute.Strategy,
    model: Any,
    optimizer: Any,
    loss_fn: Any,
    global_batch: int,
    threshold: float,
    num_groups: int = 0,
    jit_compile: bool = False,
    multiclass: bool = False,
    augment: BatchFn | None = None,
) -> Callable[[Any], tuple[tf.Tensor, ...]]:
    """A compiled step: returns the global mean loss and summed [4] ([K, 4]) train counts.

    Variables are those trainable when this is called (encoder freezing builds a second
    step after unfreezing). With ``num_groups`` > 0 it also returns the [G] sums of each
    group's per-sample losses (the ``train_loss`` signal of adaptive balancing). With
    ``jit_compile`` the forward pass, loss and gradients of each replica are one XLA
    program; the all-reduce and the optimiser update stay outside it. A collective inside
    that nested function fails (``merge_call``), so synchronized batch norm (several
    replicas) rules it out: :func:`segbalance.train.precision.resolve_jit`. ``augment``
    (deferred augmentation) turns each replica's uint8 batch into the augmented one first.
    """
    variables = list(model.trainable_variables)
    replicas = strategy.num_replicas_in_sync

    def gradients(batch: dict[str, tf.Tensor]) -> tuple[Any, ...]:
        with tf.GradientTape() as tape:
            logits = model(batch["image"], training=True)
            per_sample = tf.cast(loss_fn.call(batch["mask"], logits), tf.float32)
            by_group = per_sample  # before any loss weight: the group's own loss
            if "weight" in batch:
                per_sample = per_sample * batch["weight"]
            loss = tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        counts = tf.reduce_sum(batch_counts(batch["mask"], logits, threshold, multiclass), axis=0)
        extra: tuple[tf.Tensor, ...] = ()
        if num_groups:
            group = tf.cast(batch["group"], tf.int32)
            extra = (tf.math.unsorted_segment_sum(by_group, group, num_groups),)
        return (grads, loss, counts, *extra)

    compute = (
        tf.function(gradients, autograph=False, jit_compile=True) if jit_compile else gradients
    )

    def replica_step(batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        if augment is not None:  # outside the XLA program: the pipeline's own op chains
            batch = augment(batch)
        grads, *out = compute(batch)
        pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        reduced = [g for g, _ in pairs]
        if replicas > 1:
            reduced = tf.distribute.get_replica_context().all_reduce(SUM, reduced)
        optimizer.apply(reduced, [v for _, v in pairs])
        return tuple(out)

    @tf.function(autograph=False)  # no tensor-dependent Python control flow: faster trace
    def step(batch: Any) -> tuple[tf.Tensor, ...]:
        out = strategy.run(replica_step, args=(batch,))
        # Sums over replicas (and workers): every worker sees the same numbers.
        return tuple(strategy.reduce(SUM, x, axis=None) for x in out)

    return step


def precision_probe(cfg: Config, batch: int) -> Callable[[Sequence[str]], dict[str, float]]:
    """The trainer's ``measure`` of auto precision: seconds per step under each policy."""
    # Two warm-up calls: the first traces, the second still creates oneDNN primitives.
    return lambda policies: time_train_steps(cfg, policies, batch, steps=5, warmup=2)


def time_train_steps(
    cfg: Config,
    policies: Sequence[str],
    batch: int,
    *,
    steps: int = 3,
    warmup: int = 1,
    jit_compile: bool = False,
) -> dict[str, float]:
    """Seconds per train step of a fresh copy of ``cfg``'s model under each dtype policy.

    The precision probe (:func:`segbalance.train.precision.choose_precision`) and
    benchmarks/bench_train.py use it. Each copy gets no pretrained weights (speed does not
    depend on them) and random in-memory batches, so only the step is timed. The policies
    take turns step by step and the fastest step of each counts: on a shared machine a
    neighbour's load then slows both alike, and some steps of each escape it (runs timed one
    after the other put unet-small's bf16 at 0.71x and 2.04x float32 on the same CPU). The
    global policy is left at the last one. ``cfg.model.classes`` K >= 2 times a softmax
    model on class-index masks.
    """
    timed = {p: _timed_step(cfg, p, batch, jit_compile) for p in policies}
    for step, data in timed.values():
        for _ in range(warmup):  # the first call traces and compiles
            float(step(data)[0])
    fastest = dict.fromkeys(timed, math.inf)
    for _ in range(max(steps, 1)):
        for policy, (step, data) in timed.items():
            began = time.perf_counter()
            float(step(data)[0])  # waits for the step
            fastest[policy] = min(fastest[policy], time.perf_counter() - began)
    return fastest


def _timed_step(cfg: Config, policy: str, batch: int, jit: bool) -> tuple[Any, dict[str, Any]]:
    """A compiled train step of a new model under ``policy``, and a batch for it."""
    keras.mixed_precision.set_global_policy(policy)  # read when the layers are built
    mcfg = cfg.model.model_copy(update={"encoder_weights": "none"})
    model = build_model(mcfg, cfg.data.image_size)
    opt = schedule.build_optimizer(cfg.optimizer, 100, 1, policy)
    opt.build(model.trainable_variables)
    own_gradient_reduction(opt)
    strategy = tf.distribute.get_strategy()
    classes = cfg.model.classes
    loss_fn = get_loss(cfg.loss, classes=classes)
    multiclass = classes > 1
    step = make_train_step(
        strategy,
        model,
        opt,
        loss_fn,
        batch,
        cfg.train.threshold,
        jit_compile=jit,
        multiclass=multiclass,
    )
    h, w = cfg.data.image_size
    image = tf.random.stateless_uniform((batch, h, w, 3), (0, 0), 0.0, 255.0)
    if multiclass:  # class indices 0..K-1 from the gray level
        mask = tf.floor(image[..., :1] * classes / 256.0)
    else:
        mask = tf.cast(image[..., :1] > 127, tf.float32)
    return step, {"image": image, "mask": mask}


EvalStep = Callable[[Any], tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]]


def make_eval_step(
    strategy: tf.distribute.Strategy,
    model: Any,
    loss_fn: Any,
    num_groups: int,
    threshold: float,
    real_rows: int,
    jit_compile: bool = False,
    multiclass: bool = False,
) -> EvalStep:
    """A compiled step: per-group [G, 4] counts ([G, K, 4] when ``multiclass``), images [G],
    summed loss, loss per group [G].

    With ``jit_compile`` each replica's part (no collectives) is one XLA program.
    """
    limit = tf.constant(real_rows, tf.int64)

    def replica_part(batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        logits = model(batch["image"], training=False)
        per_sample = tf.cast(loss_fn.call(batch["mask"], logits), tf.float32)
        real = batch["index"] < limit
        # Padded rows go to the spare segment G, dropped below.
        segment = tf.where(real, tf.cast(batch["group"], tf.int32), num_groups)
        counts = batch_counts(batch["mask"], logits, threshold, multiclass)
        group_counts = tf.math.unsorted_segment_sum(counts, segment, num_groups + 1)
        images = tf.math.unsorted_segment_sum(tf.ones_like(per_sample), segment, num_groups + 1)
        loss_sum = tf.reduce_sum(tf.where(real, per_sample, 0.0))
        group_loss = tf.math.unsorted_segment_sum(per_sample, segment, num_groups + 1)
        return group_counts[:num_groups], images[:num_groups], loss_sum, group_loss[:num_groups]

    replica_step = (
        tf.function(replica_part, autograph=False, jit_compile=True)
        if jit_compile
        else replica_part
    )

    @tf.function(autograph=False)  # no tensor-dependent Python control flow: faster trace
    def step(batch: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        counts, images, loss, group_loss = strategy.run(replica_step, args=(batch,))
        # Sums over replicas (and workers) before any ratio is taken.
        return (
            strategy.reduce(SUM, counts, axis=None),
            strategy.reduce(SUM, images, axis=None),
            strategy.reduce(SUM, loss, axis=None),
            strategy.reduce(SUM, group_loss, axis=None),
        )

    return step


def validate(
    step: EvalStep,
    dataset: Any,
    steps: int,
    group_names: Sequence[str],
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One pass over the validation set: loss, overall and per-group IoU/Dice.

    Args:
        class_names: the K classes of a multiclass run (its step counts [G, K, 4]).

    Returns:
        ``val_loss``, ``val_iou``, ``val_dice``, ``mean_group_iou``, ``worst_group_iou``,
        ``worst_group``, ``groups`` (evaluate JSON shape per group) and ``group_loss``
        (mean validation loss of each group's images; NaN for a group with none).
        Multiclass: ``val_iou``/``val_dice`` are means over the foreground classes (of all
        pixels), and ``class_iou_<class>`` the IoU of every class (NaN when absent);
        ``classes`` holds the all-pixel per-class metrics.
    """
    G = len(group_names)
    shape = (4,) if class_names is None else (len(class_names), 4)
    counts, images = np.zeros((G, *shape)), np.zeros(G)
    loss_sum, group_loss = 0.0, np.zeros(G)
    iterator = iter(dataset)
    for _ in range(steps):
        c, n, loss, per_group = step(next(iterator))
        counts += c.numpy()
        images += n.numpy()
        loss_sum += float(loss.numpy())
        group_loss += per_group.numpy()
    acc = GroupMetrics(group_names, class_names)
    acc.add_totals(counts, images)
    result = acc.result()
    if class_names is None:
        overall = metrics_from_counts(*counts.sum(axis=0))
    else:
        overall = summary_metrics(counts.sum(axis=0), multiclass=True)
    present = [g for g in group_names if result["groups"][g]["images"] > 0]
    worst = min(present, key=lambda g: result["groups"][g]["iou"]) if present else ""
    nan = float("nan")
    out = {
        "val_loss": loss_sum / max(images.sum(), 1.0),
        "val_iou": float(overall["iou"]),
        "val_dice": float(overall["dice"]),
        "mean_group_iou": nan if result["mean_group_iou"] is None else result["mean_group_iou"],
        "worst_group_iou": nan if result["worst_group_iou"] is None else result["worst_group_iou"],
        "worst_group": worst,
        "groups": result["groups"],
        "group_loss": {
            g: float(group_loss[i] / images[i]) if images[i] > 0 else nan
            for i, g in enumerate(group_names)
        },
    }
    if class_names is not None:
        out["classes"] = result["classes"]
        for name, entry in result["classes"].items():
            out[f"class_iou_{name}"] = nan if entry["iou"] is None else entry["iou"]
    return out
