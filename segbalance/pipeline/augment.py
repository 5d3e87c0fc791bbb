"""Per-group augmentation driven by stateless per-sample seeds.

Random parameters are drawn once per sample and applied to the image and, for geometric
ops, to the mask (nearest-neighbour, then re-thresholded: a mask stays exactly binary).
Photometric ops touch the image only. Two kinds of ops live in one registry:

* fast ops written as plain TF ops (``flip``, ``affine``, ``brightness``, ``contrast``,
  ``hue``, ``blur``, ``noise``): the default pipeline. Consecutive fast ops are compiled
  together by XLA (``augment.jit``), and ``affine`` does scale + rotation + shift in ONE
  resampling. Measured at 384 px on 2 busy cores, the same default built from one Keras
  layer per op ran at ~8 images/s, this one at ~32 (benchmarks/bench_pipeline.py).
* Keras 3 image preprocessing layers (``rotate``, ``scale``, ``translate``,
  ``saturation``) used through ``get_random_transformation`` / ``transform_images`` /
  ``transform_segmentation_masks`` (Keras resamples masks with nearest-neighbour).

Randomness: a Keras layer's own ``SeedGenerator`` is a variable, so its draws would depend
on the order in which parallel map calls run. Keras' ``draw_seed`` accepts an int or a
``SeedGenerator`` but no tensor, so :class:`_StatelessSeed` is a ``SeedGenerator`` whose
``next()`` folds the per-sample (2,) seed tensor with a draw counter: every draw is a
``tf.random.stateless_*`` call whose seed depends only on (seed, epoch, position, op, draw).
The result is identical whatever the parallelism, sharding or resume point (for a given
``augment.jit``: XLA's stateless generator draws other numbers than TF's kernels).

Config (``AugmentConfig``): ``default`` and each ``groups[name]`` is ``"default"``,
``"none"`` or a list of op dicts such as ``{"type": "rotate", "degrees": 30, "p": 0.5}``.
``p`` is the probability that the op is applied to a sample (default 1).

Example:
    >>> aug = build_augmenter(AugmentConfig(), ["0", "1"])  # doctest: +SKIP
    >>> image, mask = aug(image, mask, group, seed)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.random.seed_generator import SeedGenerator

from segbalance.config import AugmentConfig
from segbalance.errors import UserError, unknown_name_error

# (image f32[1,H,W,3], mask f32[1,H,W,1], seed i64[2]) -> (image, mask)
OpFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
# (image f32[H,W,3], mask f32[H,W,1], group i32[], seed i64[2]) -> (image, mask)
Augmenter = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]

DEFAULT_OPS: list[dict[str, Any]] = [
    {"type": "flip", "mode": "horizontal", "p": 0.5},
    {"type": "affine", "scale": 0.2, "degrees": 30.0, "p": 0.5},
    {"type": "brightness", "factor": 0.2, "p": 0.5},
    {"type": "contrast", "factor": 0.2, "p": 0.5},
    {"type": "hue", "factor": 0.1, "p": 0.3},
    {"type": "blur", "sigma": (0.1, 1.5), "kernel_size": 5, "p": 0.2},
    {"type": "noise", "std": 8.0, "p": 0.2},
]


class _StatelessSeed(SeedGenerator):
    """A SeedGenerator look-alike whose draws are pure functions of a (2,) seed tensor."""

    def __init__(self, seed: tf.Tensor) -> None:  # no super(): no state variable wanted
        self._base = seed
        self._draws = 0

    def next(self, ordered: bool = True) -> tf.Tensor:
        self._draws += 1
        return tf.random.experimental.stateless_fold_in(self._base, self._draws)


def _keras_op(layer: Any, geometric: bool, force: str | None = None) -> OpFn:
    """Wrap a Keras image layer: one draw, image (and mask if geometric) transformed."""

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        data = {"images": image, "segmentation_masks": mask}
        t = layer.get_random_transformation(data, training=True, seed=_StatelessSeed(seed))
        if force is not None:  # the op's own coin flip is replaced by our "p"
            t[force] = tf.ones_like(t[force])
        image = layer.transform_images(image, t)
        if geometric:
            mask = layer.transform_segmentation_masks(mask, t)
        return image, mask

    return apply


# Layers are built in float32 whatever the global mixed-precision policy is.
_F32 = {"dtype": "float32"}


def _flip(mode: str = "horizontal") -> OpFn:
    """Mirror image and mask (``p`` decides whether; exact, no resampling)."""
    axes = {"horizontal": [2], "vertical": [1], "horizontal_and_vertical": [1, 2]}
    if mode not in axes:
        raise UserError(f"flip mode '{mode}': use {', '.join(axes)}")

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.reverse(image, axes[mode]), tf.reverse(mask, axes[mode])

    return apply


def _reflect(v: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """Mirror coordinates outside [0, n-1] back inside (symmetric about the pixel edges).

    One bounce on each side (enough for any scale/rotation the affine op allows; anything
    further is clamped): two selects, several times cheaper than a floormod per pixel.
    """
    v = tf.where(v < -0.5, -1.0 - v, v)
    v = tf.where(v > n - 0.5, 2.0 * n - 1.0 - v, v)
    return tf.clip_by_value(v, 0.0, n - 1.0)


def _warp(image: tf.Tensor, mask: tf.Tensor, m: Sequence[tf.Tensor]) -> tuple[tf.Tensor, ...]:
    """Resample [1,H,W,C] image (bilinear) and mask (nearest) at in = M @ out, reflect fill.

    Four gathers and a lerp: XLA compiles this into one loop, about twice as fast on a CPU as
    ImageProjectiveTransformV3 (same result to 1e-4 on average).
    """
    shape = tf.shape(image)
    hi, wi = shape[1], shape[2]
    h, w = tf.cast(hi, tf.float32), tf.cast(wi, tf.float32)
    yy, xx = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
    sx = _reflect(m[0] * xx + m[1] * yy + m[2], w)
    sy = _reflect(m[3] * xx + m[4] * yy + m[5], h)
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    x0i, y0i = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1i, y1i = tf.minimum(x0i + 1, wi - 1), tf.minimum(y0i + 1, hi - 1)
    flat = tf.reshape(image, [hi * wi, -1])

    def at(yi: tf.Tensor, xi: tf.Tensor) -> tf.Tensor:
        return tf.gather(flat, yi * wi + xi)

    top = at(y0i, x0i) * (1.0 - fx) + at(y0i, x1i) * fx
    bottom = at(y1i, x0i) * (1.0 - fx) + at(y1i, x1i) * fx
    out = (top * (1.0 - fy) + bottom * fy)[None]
    near = tf.cast(tf.round(sy), tf.int32) * wi + tf.cast(tf.round(sx), tf.int32)
    out_mask = tf.gather(tf.reshape(mask, [hi * wi, -1]), near)[None]
    return out, out_mask


def _affine(
    scale: float = 0.2, degrees: float = 30.0, translate: float = 0.0, *, _xla: bool = True
) -> OpFn:
    """Scale, rotation and shift about the centre, fused into ONE resampling.

    Like albumentations' ShiftScaleRotate: one draw of all three, one warp of the image
    (bilinear) and the mask (nearest), reflected borders. The separate Keras-layer ops
    ``scale``/``rotate``/``translate`` resample once each.
    """
    if not (0 <= scale < 1 and 0 <= degrees <= 180 and 0 <= translate < 1):
        raise UserError(
            f"affine scale={scale}, degrees={degrees}, translate={translate}: "
            "use 0 <= scale < 1, 0 <= degrees <= 180, 0 <= translate < 1"
        )

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        draws = tf.random.stateless_uniform([4], seed, -1.0, 1.0)
        zoom = 1.0 + float(scale) * draws[0]
        angle = float(degrees) * np.pi / 180.0 * draws[1]
        h = tf.cast(tf.shape(image)[1], tf.float32)
        w = tf.cast(tf.shape(image)[2], tf.float32)
        # Output pixel -> input pixel: in = c + R(-angle) (out - c - shift) / zoom.
        cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        ox = cx + float(translate) * w * draws[2]
        oy = cy + float(translate) * h * draws[3]
        m = [cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy]
        if _xla:
            return _warp(image, mask, m)
        # Without XLA the gathers are slower than TF's fused kernel: use that.
        matrix = tf.stack([*m, 0.0, 0.0])[None]
        out = [
            tf.raw_ops.ImageProjectiveTransformV3(
                images=x,
                transforms=matrix,
                output_shape=tf.shape(image)[1:3],
                fill_value=0.0,
                interpolation=method,
                fill_mode="REFLECT",
            )
            for x, method in ((image, "BILINEAR"), (mask, "NEAREST"))
        ]
        return out[0], out[1]

    return apply


def _rotate(degrees: float = 30.0, fill_mode: str = "reflect") -> OpFn:
    layer = keras.layers.RandomRotation(float(degrees) / 360.0, fill_mode=fill_mode, **_F32)
    return _keras_op(layer, True)


def _scale(factor: float = 0.2, fill_mode: str = "reflect") -> OpFn:
    # width_factor=None keeps the aspect ratio: one isotropic scale per sample.
    f = float(factor)
    return _keras_op(keras.layers.RandomZoom((-f, f), fill_mode=fill_mode, **_F32), True)


def _translate(fraction: float = 0.1, fill_mode: str = "reflect") -> OpFn:
    f = float(fraction)
    layer = keras.layers.RandomTranslation(f, f, fill_mode=fill_mode, **_F32)
    return _keras_op(layer, True)


def _brightness(factor: float = 0.2) -> OpFn:
    """Add a per-sample offset in [-factor, factor] * 255 (as keras.layers.RandomBrightness)."""

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        delta = tf.random.stateless_uniform([], seed, -float(factor), float(factor))
        return image + 255.0 * delta, mask

    return apply


def _contrast(factor: float = 0.2) -> OpFn:
    """Scale each channel about its mean by [1 - factor, 1 + factor] (as RandomContrast)."""

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        c = tf.random.stateless_uniform([], seed, 1.0 - float(factor), 1.0 + float(factor))
        mean = tf.reduce_mean(image, axis=[1, 2], keepdims=True)
        return (image - mean) * c + mean, mask

    return apply


def _hue(factor: float = 0.1) -> OpFn:
    """Hue shift by up to ``factor`` of a turn (tf.image.adjust_hue: one fused kernel)."""

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        delta = tf.random.stateless_uniform([], seed, -float(factor), float(factor))
        return tf.image.adjust_hue(image / 255.0, delta) * 255.0, mask

    return apply


def _saturation(factor: float = 0.2) -> OpFn:
    layer = keras.layers.RandomSaturation(factor, value_range=(0, 255), **_F32)
    return _keras_op(layer, False)


def _blur(sigma: Sequence[float] = (0.1, 1.5), kernel_size: int = 5) -> OpFn:
    """Gaussian blur with a per-sample sigma, as two 1-D passes of shifted slices.

    Plain slices and multiply-adds: several times faster on a CPU than a depthwise
    convolution of the same kernel (measured 13 vs 36 ms at 384 px).
    """
    k = int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise UserError(f"blur kernel_size={k}: use an odd size >= 1")
    lo, hi = (float(sigma[0]), float(sigma[-1]))
    if not 0 < lo <= hi:
        raise UserError(f"blur sigma={list(sigma)}: use 0 < low <= high")
    r = k // 2

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        s = tf.random.stateless_uniform([], seed, lo, hi)
        taps = tf.exp(-(tf.range(-r, r + 1, dtype=tf.float32) ** 2) / (2.0 * s * s))
        taps = taps / tf.reduce_sum(taps)
        out = image
        for axis in (1, 2):
            pad = [[0, 0], [0, 0], [0, 0], [0, 0]]
            pad[axis] = [r, r]
            padded = tf.pad(out, pad, mode="SYMMETRIC")
            size = tf.shape(out)[axis]
            parts = [
                taps[i] * (padded[:, i : i + size] if axis == 1 else padded[:, :, i : i + size])
                for i in range(k)
            ]
            out = tf.add_n(parts)
        return out, mask

    return apply


def _noise(std: float = 8.0) -> OpFn:
    """Additive Gaussian noise, sigma drawn per sample in [0, std] (0..255 units).

    One noise value per pixel, the same on the three channels (luminance noise, like
    albumentations' ``per_channel=False``): drawing a third of the normals makes it ~5x
    cheaper on a CPU than per-channel noise.
    """

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        fold = tf.random.experimental.stateless_fold_in
        sigma = tf.random.stateless_uniform([], fold(seed, 1), 0.0, float(std))
        shape = tf.concat([tf.shape(image)[:-1], [1]], axis=0)
        noise = tf.random.stateless_normal(shape, fold(seed, 2)) * sigma
        return image + noise, mask

    return apply


_OPS: dict[str, Callable[..., OpFn]] = {
    "flip": _flip,
    "affine": _affine,
    "brightness": _brightness,
    "contrast": _contrast,
    "hue": _hue,
    "blur": _blur,
    "noise": _noise,
    # Keras 3 preprocessing layers (one resampling each; no XLA kernel for their warp).
    "rotate": _rotate,
    "scale": _scale,
    "translate": _translate,
    "saturation": _saturation,
}
# Ops made of plain TF ops that XLA compiles; a pipeline of only these is jit-compiled.
_XLA_SAFE = {"flip", "affine", "brightness", "contrast", "hue", "blur"}


def get_op(name: str) -> Callable[..., OpFn]:
    """The builder of an augmentation op by name (raises a UserError listing valid ones)."""
    if name not in _OPS:
        raise unknown_name_error("augmentation op", name, _OPS)
    return _OPS[name]


def _gated(fn: OpFn, p: float) -> OpFn:
    """Apply ``fn`` with probability ``p`` (decided from the op's seed; skipped work is free)."""
    if p >= 1.0:
        return lambda image, mask, seed: fn(
            image, mask, tf.random.experimental.stateless_fold_in(seed, 1)
        )

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        fold = tf.random.experimental.stateless_fold_in
        coin = tf.random.stateless_uniform([], fold(seed, 0))
        return tf.cond(coin < p, lambda: fn(image, mask, fold(seed, 1)), lambda: (image, mask))

    return apply


def build_op(spec: dict[str, Any], where: str = "augment", jit: bool = True) -> OpFn:
    """Build one op from a dict such as ``{"type": "rotate", "degrees": 30, "p": 0.5}``."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise UserError(f"{where}: each op needs a 'type' key, got {spec!r}")
    params = dict(spec)
    name = str(params.pop("type"))
    p = float(params.pop("p", 1.0))
    if not 0.0 <= p <= 1.0:
        raise UserError(f"{where}: op '{name}' has p={p}; use a probability in [0, 1]")
    builder = get_op(name)
    valid = [k for k in inspect.signature(builder).parameters if not k.startswith("_")]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise UserError(
            f"{where}: op '{name}' has no parameter(s) {', '.join(unknown)}. "
            f"Valid: p, {', '.join(valid)}"
        )
    if "_xla" in inspect.signature(builder).parameters:
        params["_xla"] = jit
    try:
        fn = builder(**params)
    except (ValueError, TypeError) as err:
        shown = {k: v for k, v in params.items() if not k.startswith("_")}
        raise UserError(f"{where}: op '{name}' with {shown}: {err}") from err
    return _gated(fn, p)


def resolve_ops(spec: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    """``"default"`` -> :data:`DEFAULT_OPS`, ``"none"`` -> [], a list -> itself."""
    if spec == "default":
        return [dict(op) for op in DEFAULT_OPS]
    if spec == "none":
        return []
    if isinstance(spec, str):
        raise UserError(f"augmentation '{spec}': use 'default', 'none' or a list of ops")
    return list(spec)


def _chain(ops: list[OpFn], first: int) -> OpFn:
    """Run ``ops`` in order; op i (counted from ``first``) gets seed fold(seed, i)."""

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for i, op in enumerate(ops, start=first):
            image, mask = op(image, mask, tf.random.experimental.stateless_fold_in(seed, i))
        return image, mask

    return apply


def build_pipeline(
    spec: list[dict[str, Any]] | str, where: str = "augment.default", jit: bool = True
) -> OpFn:
    """Chain ops in order; the mask is re-thresholded so it stays exactly binary.

    Runs of consecutive XLA-safe ops are jit-compiled together (they fuse into a few loops
    over the pixels); the others (Keras layers, noise: XLA's RNG is ~10x slower on a CPU)
    run as plain TF ops.
    """
    specs = resolve_ops(spec)
    ops = [build_op(op, f"{where}[{i}]", jit) for i, op in enumerate(specs)]
    segments: list[OpFn] = []
    start = 0
    while start < len(ops):
        safe = specs[start].get("type") in _XLA_SAFE
        end = start + 1
        while end < len(ops) and (specs[end].get("type") in _XLA_SAFE) == safe:
            end += 1
        chain = _chain(ops[start:end], start)
        if safe and jit:
            chain = tf.function(chain, jit_compile=True, autograph=False, reduce_retracing=True)
        segments.append(chain)
        start = end

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for segment in segments:
            image, mask = segment(image, mask, seed)
        image = tf.clip_by_value(image, 0.0, 255.0)
        mask = tf.cast(mask > 0.5, tf.float32)
        return image, mask

    return apply


def _group_specs(cfg: AugmentConfig, group_names: Sequence[str]) -> list[Any]:
    """The op spec of every group (index = group id); unknown group names are errors."""
    unknown = sorted(set(cfg.groups) - set(group_names))
    if unknown:
        raise UserError(
            f"augment.groups names group(s) {', '.join(unknown)} that are not in the data. "
            f"Valid groups: {', '.join(group_names)}"
        )
    return [cfg.groups.get(name, cfg.default) for name in group_names]


def build_augmenter(cfg: AugmentConfig, group_names: Sequence[str]) -> Augmenter | None:
    """The per-sample augmentation of a training set, or None when nothing is augmented.

    Groups sharing a spec share one pipeline; inside the map a ``tf.switch_case`` on the
    sample's group id picks the pipeline, so one dataset serves any number of groups.

    Args:
        cfg: the ``augment`` section of the config.
        group_names: ``manifest.groups`` (index = group id).
    """
    if cfg.engine == "none":
        return None
    if cfg.engine == "albumentations":
        return _albumentations_augmenter(cfg)
    specs = _group_specs(cfg, group_names)
    keys = [repr(resolve_ops(s)) for s in specs]
    if all(not resolve_ops(s) for s in specs):
        return None
    distinct = list(dict.fromkeys(keys))
    where = {
        k: f"augment.groups.{group_names[keys.index(k)]}"
        if group_names[keys.index(k)] in cfg.groups
        else "augment.default"
        for k in distinct
    }
    pipelines = [build_pipeline(specs[keys.index(k)], where[k], cfg.jit) for k in distinct]
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


def _albumentations_augmenter(cfg: AugmentConfig) -> Augmenter:
    """An albumentations pipeline file (``A.save`` format) applied through tf.numpy_function."""
    path = cfg.albumentations_file
    if not path:
        raise UserError("augment.engine=albumentations needs augment.albumentations_file")
    try:
        import albumentations as A  # optional extra: imported only when used
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
        out = transform(
            image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
            mask=(mask[..., 0] > 0.5).astype(np.uint8),
        )
        if out["image"].shape[:2] != image.shape[:2]:
            raise ValueError(f"{path} changed the image size; segbalance resizes before it")
        out_mask = np.asarray(out["mask"]).reshape((*image.shape[:2], 1))
        return out["image"].astype(np.float32), (out_mask > 0).astype(np.float32)

    def augment(
        image: tf.Tensor, mask: tf.Tensor, group: tf.Tensor, seed: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        new_image, new_mask = tf.numpy_function(
            run, [image, mask, seed], [tf.float32, tf.float32], stateful=False
        )
        return tf.ensure_shape(new_image, image.shape), tf.ensure_shape(new_mask, mask.shape)

    return augment
