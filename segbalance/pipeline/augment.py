"""The augmentation pipeline: per-group op lists driven by stateless per-sample seeds.

Each group's op list (``augment.default`` or ``augment.groups[name]``, see
:mod:`segbalance.augment_ops`) becomes one chain of kernels (:mod:`segbalance.pipeline.kernels`);
op i of a chain gets the seed ``fold(sample seed, i)``, and its ``p`` coin and its own draws
are folds of that. Every draw is thus a function of (seed, epoch, position, op, draw) only:
the result is identical whatever the parallelism, sharding or resume point.

Runs of consecutive XLA-safe ops (``op.xla``) are compiled together (``augment.jit``):
measured at 384 px on 2 busy cores, the default built from one Keras layer per op ran at ~8
images/s, this one at ~32 (benchmarks/bench_pipeline.py). Groups sharing an op list share a
pipeline; a ``tf.switch_case`` on the group id picks it. ``augment.engine=albumentations``
runs an ``A.save()`` file through ``tf.numpy_function`` instead.

Masks: a binary mask is re-thresholded after the ops, so it stays exactly {0, 1}. A
multiclass mask (``num_classes`` K >= 2: class indices, 255 ignored) moves with nearest
neighbour only and travels *lifted*: class c as c + 1 and ignored pixels as 0. A border an
op opens (``fill_mode: constant``, albumentations' ``fill_mask``) is filled with 0, so it
comes back as 255, ignored, never as the background; any value outside 0..K-1 does too.

Example:
    >>> aug = build_augmenter(AugmentConfig(), ["0", "1"])  # doctest: +SKIP
    >>> image, mask = aug(image, mask, group, seed)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import tensorflow as tf

from segbalance.augment_ops import DEFAULT_OPS, AugmentOp
from segbalance.classes import IGNORE_INDEX
from segbalance.config import AugmentConfig
from segbalance.errors import UserError
from segbalance.pipeline.kernels import DualFn, as_float, build_kernel, keeps_dtype, select_gated

# (image u8|f32[H,W,3], mask f32[H,W,1], group i32[], seed i64[2]) -> (image f32, mask f32)
Augmenter = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
OpSpec = Sequence[AugmentOp] | Literal["default", "none"]


def _gated(fn: DualFn, p: float, select: bool = False, keeps: bool = False) -> DualFn:
    """Apply ``fn`` with probability ``p`` (decided from the op's seed; skipped work is free).

    ``select``: compute ``fn`` always and pick by the coin (kernels.select_gated: cheap
    pixelwise ops inside XLA). ``keeps``: ``fn`` returns the image in its input dtype; else
    a skipped op casts it to float32 as ``fn`` would, so both ways give one dtype.
    """
    fold = tf.random.experimental.stateless_fold_in
    if p >= 1.0:
        return lambda image, mask, seed: fn(image, mask, fold(seed, 1))

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        on = tf.random.stateless_uniform([], fold(seed, 0)) < p
        passed = image if keeps else as_float(image)
        if select:
            new_image, new_mask = fn(image, mask, fold(seed, 1))
            return tf.where(on, new_image, passed), tf.where(on, new_mask, mask)
        return tf.cond(on, lambda: fn(image, mask, fold(seed, 1)), lambda: (passed, mask))

    return apply


def build_op(op: AugmentOp, compiled: bool, clip: bool = False) -> DualFn:
    """One op: its kernel behind its ``p`` coin (``compiled``: runs inside an XLA cluster).

    ``clip``: the op clips the image it makes to 0..255 (an image-only op after the
    pipeline's finish, see :func:`_segments`).
    """
    select = compiled and select_gated(op)
    kernel = build_kernel(op, compiled)
    if clip:
        kernel = _clipped(kernel)
    return _gated(kernel, op.p, select, keeps_dtype(op))


def _clipped(fn: DualFn) -> DualFn:
    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        new_image, new_mask = fn(image, mask, seed)
        return tf.clip_by_value(new_image, 0.0, 255.0), new_mask

    return apply


def resolve_ops(spec: OpSpec) -> list[AugmentOp]:
    """``"default"`` -> :data:`DEFAULT_OPS`, ``"none"`` -> [], a list -> itself."""
    if spec == "default":
        return list(DEFAULT_OPS)
    if spec == "none":
        return []
    return list(spec)


def _chain(ops: list[DualFn], first: int) -> DualFn:
    """Run ``ops`` in order; op i (counted from ``first``) gets seed fold(seed, i)."""

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for i, op in enumerate(ops, start=first):
            image, mask = op(image, mask, tf.random.experimental.stateless_fold_in(seed, i))
        return image, mask

    return apply


Finish = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def _runs(ops: list[AugmentOp], jit: bool) -> list[tuple[int, int, bool]]:
    """(start, end, compiled) of each run of consecutive ops of equal ``xla``."""
    runs: list[tuple[int, int, bool]] = []
    start = 0
    while start < len(ops):
        end = start + 1
        while end < len(ops) and ops[end].xla == ops[start].xla:
            end += 1
        runs.append((start, end, ops[start].xla and jit))
        start = end
    return runs


def _finishing_run(ops: list[AugmentOp], runs: list[tuple[int, int, bool]]) -> int:
    """The run that ends with the pipeline's finish: the last compiled one when only
    image-only ops follow it (they then clip their own output), else the last run."""
    compiled = [k for k, run in enumerate(runs) if run[2]]
    if compiled and all(op.targets == "image" for op in ops[runs[compiled[-1]][1] :]):
        return compiled[-1]
    return len(runs) - 1


def _segments(ops: list[AugmentOp], jit: bool, finish: Finish) -> list[DualFn]:
    """Consecutive ops split into runs of equal ``xla``; the XLA runs compiled if ``jit``.

    The XLA-safe ops of a run fuse into a few loops over the pixels; the others (Keras
    layers, noise) run as plain TF ops. ``finish`` (clip the image, re-threshold the mask)
    ends the last compiled run when only image-only ops follow it, where XLA fuses it with
    the run's last op instead of two more passes over the pixels; those ops then clip what
    they make, which costs only when they run (the default's noise: p = 0.2).
    """
    runs = _runs(ops, jit)
    finishing = _finishing_run(ops, runs)
    segments: list[DualFn] = []
    for k, (start, end, compiled) in enumerate(runs):
        fns = [build_op(op, compiled, clip=k > finishing) for op in ops[start:end]]
        chain = _chain(fns, start)
        if k == finishing:
            chain = _then(chain, finish)
        if compiled:
            chain = tf.function(chain, jit_compile=True, autograph=False, reduce_retracing=True)
        segments.append(chain)
    return segments


def _then(chain: DualFn, finish: Finish) -> DualFn:
    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return finish(*chain(image, mask, seed))

    return apply


def lift_labels(mask: Any, num_classes: int) -> Any:
    """Class indices -> c + 1 for classes, 0 for ignored (or any other) pixels (module doc).

    ``mask``: a float tensor, or a numpy array (the albumentations engine).
    """
    if isinstance(mask, np.ndarray):
        inside = (mask >= 0) & (mask < num_classes)
        return np.where(inside, mask + 1, 0).astype(np.float32)
    return tf.where((mask >= 0) & (mask < num_classes), mask + 1.0, 0.0)


def lower_labels(mask: Any, num_classes: int) -> Any:
    """Undo :func:`lift_labels`: c + 1 -> c, anything else (a filled border) -> 255."""
    if isinstance(mask, np.ndarray):
        labels = np.rint(mask) - 1
        inside = (labels >= 0) & (labels < num_classes)
        return np.where(inside, labels, IGNORE_INDEX).astype(np.float32)
    labels = tf.round(mask) - 1.0
    return tf.where((labels >= 0) & (labels < num_classes), labels, float(IGNORE_INDEX))


def build_pipeline(spec: OpSpec, jit: bool = True, num_classes: int = 1) -> DualFn:
    """Chain ops in order; the mask stays binary, or (``num_classes`` >= 2) class indices.

    The image may come in as uint8 or float32; it goes out float32 in 0..255.
    """

    def finish(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # uint8 pixels (no op made fractions) need no clip
        is_float = image.dtype == tf.float32
        image = tf.clip_by_value(image, 0.0, 255.0) if is_float else as_float(image)
        if num_classes > 1:
            return image, lower_labels(mask, num_classes)
        return image, tf.cast(mask > 0.5, tf.float32)

    segments = _segments(resolve_ops(spec), jit, finish)

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        mask = as_float(mask)
        if num_classes > 1:
            mask = lift_labels(mask, num_classes)
        if not segments:
            return finish(image, mask)
        for segment in segments:
            image, mask = segment(image, mask, seed)
        return image, mask

    return apply


def check_groups(cfg: AugmentConfig, group_names: Sequence[str]) -> None:
    """Refuse ``augment.groups`` entries for groups the data does not have.

    Raises:
        UserError: naming them and the valid groups.
    """
    unknown = sorted(set(cfg.groups) - set(group_names))
    if unknown:
        raise UserError(
            f"augment.groups names group(s) {', '.join(unknown)} that are not in the data. "
            f"Valid groups: {', '.join(group_names)}"
        )


def _group_specs(cfg: AugmentConfig, group_names: Sequence[str]) -> list[OpSpec]:
    """The op spec of every group (index = group id); unknown group names are errors."""
    check_groups(cfg, group_names)
    return [cfg.groups.get(name, cfg.default) for name in group_names]


def build_augmenter(
    cfg: AugmentConfig, group_names: Sequence[str], num_classes: int = 1
) -> Augmenter | None:
    """The per-sample augmentation of a training set, or None when nothing is augmented.

    Groups sharing a spec share one pipeline; inside the map a ``tf.switch_case`` on the
    sample's group id picks the pipeline, so one dataset serves any number of groups.

    Args:
        cfg: the ``augment`` section of the config.
        group_names: ``manifest.groups`` (index = group id).
        num_classes: 1 for binary masks, K for class-index masks (module doc).
    """
    if cfg.engine == "none":
        return None
    if cfg.engine == "albumentations":
        return _albumentations_augmenter(cfg, num_classes)
    ops = [resolve_ops(s) for s in _group_specs(cfg, group_names)]
    if not any(ops):
        return None
    keys = [repr(o) for o in ops]
    distinct = list(dict.fromkeys(keys))
    pipelines = [build_pipeline(ops[keys.index(k)], cfg.jit, num_classes) for k in distinct]
    branch_of_group = tf.constant([distinct.index(k) for k in keys], tf.int32)

    def augment(
        image: tf.Tensor, mask: tf.Tensor, group: tf.Tensor, seed: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        image4, mask4 = image[None], mask[None]
        if len(pipelines) == 1:
            image4, mask4 = pipelines[0](image4, mask4, seed)
        else:
            branches = [(lambda fn=fn: fn(image4, mask4, seed)) for fn in pipelines]
            image4, mask4 = tf.switch_case(tf.gather(branch_of_group, group), branches)
        return tf.ensure_shape(image4[0], image.shape), tf.ensure_shape(mask4[0], mask.shape)

    return augment


def _seed_int(seed: np.ndarray) -> int:
    """A 32-bit seed for albumentations from the (2,) per-sample seed."""
    words = [int(x) % (1 << 32) for x in np.asarray(seed).ravel()]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def _albumentations_augmenter(cfg: AugmentConfig, num_classes: int = 1) -> Augmenter:
    """An albumentations pipeline file (``A.save`` format) applied through tf.numpy_function.

    Multiclass masks reach it lifted (uint8 c + 1, 0 ignored; module doc), so a ``fill_mask``
    of 0 fills opened borders with the ignore index.
    """
    path = cfg.albumentations_file
    if not path:
        raise UserError("augment.engine=albumentations needs augment.albumentations_file")
    try:  # an optional extra: imported only when this engine is used
        A = importlib.import_module("albumentations")
    except ImportError as err:
        raise UserError(
            "augment.engine=albumentations needs the optional extra: "
            "pip install 'segbalance[albumentations]' (or set augment.engine=keras)"
        ) from err
    fmt = "yaml" if str(path).lower().endswith((".yaml", ".yml")) else "json"
    try:
        A.load(path, data_format=fmt)
    except Exception as err:  # any parse/shape error of a user file is bad input
        raise UserError(f"cannot load albumentations pipeline {path}: {err}") from err
    local = threading.local()  # one Compose per map thread: seeding is then race-free

    def run(image: np.ndarray, mask: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, ...]:
        transform = getattr(local, "transform", None)
        if transform is None:
            transform = local.transform = A.load(path, data_format=fmt)
        transform.set_random_seed(_seed_int(seed))
        labels = mask[..., 0]
        out = transform(
            image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
            mask=(lift_labels(labels, num_classes) if num_classes > 1 else labels > 0.5).astype(
                np.uint8
            ),
        )
        if out["image"].shape[:2] != image.shape[:2]:
            raise ValueError(f"{path} changed the image size; segbalance resizes before it")
        out_mask = np.asarray(out["mask"], np.float32).reshape((*image.shape[:2], 1))
        if num_classes > 1:
            return out["image"].astype(np.float32), lower_labels(out_mask, num_classes)
        return out["image"].astype(np.float32), (out_mask > 0).astype(np.float32)

    def augment(
        image: tf.Tensor, mask: tf.Tensor, group: tf.Tensor, seed: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        new_image, new_mask = tf.numpy_function(
            run, [image, mask, seed], [tf.float32, tf.float32], stateful=False
        )
        return tf.ensure_shape(new_image, image.shape), tf.ensure_shape(new_mask, mask.shape)

    return augment
