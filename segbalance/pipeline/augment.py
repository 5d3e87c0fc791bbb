"""Per-group augmentation driven by stateless per-sample seeds.

Every op is a Keras 3 image preprocessing layer (or, for noise, a few TF ops) used through
``get_random_transformation`` / ``transform_images`` / ``transform_segmentation_masks``: the
random parameters are drawn once and applied to the image and, for geometric ops, to the
mask (Keras resamples masks with nearest-neighbour). Photometric ops touch the image only.

Randomness: the layers' own ``SeedGenerator`` is a variable, so draws would depend on the
order in which parallel map calls run. Keras' ``draw_seed`` accepts an int or a
``SeedGenerator`` but no tensor, so :class:`_StatelessSeed` is a ``SeedGenerator`` whose
``next()`` folds a per-sample (2,) seed tensor with a draw counter: every draw is a
``tf.random.stateless_*`` call whose seed depends only on (seed, epoch, position, op, draw).
The result is identical whatever the parallelism, sharding or resume point.

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
    {"type": "scale", "factor": 0.2, "p": 0.5},
    {"type": "rotate", "degrees": 30.0, "p": 0.5},
    {"type": "brightness", "factor": 0.2, "p": 0.5},
    {"type": "contrast", "factor": 0.2, "p": 0.5},
    {"type": "hue", "factor": 0.1, "p": 0.3},
    {"type": "blur", "sigma": (0.1, 1.5), "kernel_size": 5, "p": 0.2},
    {"type": "noise", "std": 8.0, "p": 0.3},
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
    if mode not in ("horizontal", "vertical", "horizontal_and_vertical"):
        raise UserError(f"flip mode '{mode}': use horizontal, vertical or horizontal_and_vertical")
    return _keras_op(keras.layers.RandomFlip(mode, **_F32), True, force="flips")


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
    return _keras_op(keras.layers.RandomBrightness(factor, value_range=(0, 255), **_F32), False)


def _contrast(factor: float = 0.2) -> OpFn:
    return _keras_op(keras.layers.RandomContrast(factor, value_range=(0, 255), **_F32), False)


def _hue(factor: float = 0.1) -> OpFn:
    return _keras_op(keras.layers.RandomHue(factor, value_range=(0, 255), **_F32), False)


def _saturation(factor: float = 0.2) -> OpFn:
    layer = keras.layers.RandomSaturation(factor, value_range=(0, 255), **_F32)
    return _keras_op(layer, False)


def _blur(sigma: Sequence[float] = (0.1, 1.5), kernel_size: int = 5) -> OpFn:
    # factor=(1, 1): the layer always blurs; whether it runs at all is our "p".
    layer = keras.layers.RandomGaussianBlur(
        factor=(1.0, 1.0),
        kernel_size=int(kernel_size),
        sigma=tuple(float(s) for s in sigma),
        value_range=(0, 255),
        **_F32,
    )
    return _keras_op(layer, False)


def _noise(std: float = 8.0) -> OpFn:
    """Additive Gaussian noise with a per-sample sigma in [0, std] (0..255 units)."""

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        fold = tf.random.experimental.stateless_fold_in
        sigma = tf.random.stateless_uniform([], fold(seed, 1), 0.0, float(std))
        noise = tf.random.stateless_normal(tf.shape(image), fold(seed, 2)) * sigma
        return image + noise, mask

    return apply


_OPS: dict[str, Callable[..., OpFn]] = {
    "flip": _flip,
    "rotate": _rotate,
    "scale": _scale,
    "translate": _translate,
    "brightness": _brightness,
    "contrast": _contrast,
    "hue": _hue,
    "saturation": _saturation,
    "blur": _blur,
    "noise": _noise,
}


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


def build_op(spec: dict[str, Any], where: str = "augment") -> OpFn:
    """Build one op from a dict such as ``{"type": "rotate", "degrees": 30, "p": 0.5}``."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise UserError(f"{where}: each op needs a 'type' key, got {spec!r}")
    params = dict(spec)
    name = str(params.pop("type"))
    p = float(params.pop("p", 1.0))
    if not 0.0 <= p <= 1.0:
        raise UserError(f"{where}: op '{name}' has p={p}; use a probability in [0, 1]")
    builder = get_op(name)
    valid = list(inspect.signature(builder).parameters)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise UserError(
            f"{where}: op '{name}' has no parameter(s) {', '.join(unknown)}. "
            f"Valid: p, {', '.join(valid)}"
        )
    try:
        fn = builder(**params)
    except (ValueError, TypeError) as err:
        raise UserError(f"{where}: op '{name}' with {params}: {err}") from err
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


def build_pipeline(spec: list[dict[str, Any]] | str, where: str = "augment.default") -> OpFn:
    """Chain ops in order; the mask is re-thresholded so it stays exactly binary."""
    ops = [build_op(op, f"{where}[{i}]") for i, op in enumerate(resolve_ops(spec))]

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for i, op in enumerate(ops):
            image, mask = op(image, mask, tf.random.experimental.stateless_fold_in(seed, i))
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
    pipelines = [build_pipeline(specs[keys.index(k)], where[k]) for k in distinct]
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
