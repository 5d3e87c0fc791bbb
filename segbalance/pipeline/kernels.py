"""TF kernels of the augmentation ops: each draws its parameters from a seed and applies them.

:func:`build_kernel` turns an op of :mod:`segbalance.augment_ops` into a function of
``(image [1,H,W,3], mask f32[1,H,W,1], seed i64[2])``. Ops that target the image only
are written as ``(image, seed) -> image``: the mask passes by them untouched. Geometric ops
resample the image bilinearly and the mask with nearest neighbour.

The image comes in as uint8 (decoded pixels) or float32 0..255. Flip keeps uint8
(:func:`keeps_dtype`), the affine warp gathers uint8 pixels and interpolates in float32, and
every other kernel casts to float32 first: decoded pixels stay a quarter of the bytes until
the first op that makes fractions.

Every random draw is a ``tf.random.stateless_*`` call on the given seed, so a result depends
only on the seed (for a given ``compiled``: XLA's stateless generator draws other numbers
than TF's kernels).

Keras layers (``rotate``, ``scale``, ``translate``, ``saturation``) are used through
``get_random_transformation`` / ``transform_images`` / ``transform_segmentation_masks``. A
layer's own ``SeedGenerator`` is a variable, so its draws would depend on the order in which
parallel map calls run; Keras' ``draw_seed`` accepts an int or a ``SeedGenerator`` but no
tensor, so :class:`_StatelessSeed` is a ``SeedGenerator`` whose ``next()`` folds the
per-sample seed with a draw counter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, cast

import keras
import numpy as np
import tensorflow as tf

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

# (image u8|f32[1,H,W,3], mask f32[1,H,W,1], seed i64[2]) -> (image, mask)
DualFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
# (image u8|f32[1,H,W,3], seed i64[2]) -> image f32
ImageFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
Kernel = DualFn | ImageFn

# Layers are built in float32 whatever the global mixed-precision policy is.
_F32 = {"dtype": "float32"}


def build_kernel(op: AugmentOp, compiled: bool) -> DualFn:
    """The TF function of ``op`` (``compiled``: it will run inside an XLA cluster)."""
    fn = _kernel(op, compiled)
    if op.targets == "image":
        image_fn = cast(ImageFn, fn)
        return lambda image, mask, seed: (image_fn(as_float(image), seed), mask)
    return cast(DualFn, fn)


def as_float(image: tf.Tensor) -> tf.Tensor:
    """float32 pixels (uint8 cast once; float32 passes)."""
    return image if image.dtype == tf.float32 else tf.cast(image, tf.float32)


def keeps_dtype(op: AugmentOp) -> bool:
    """Whether ``op``'s kernel returns the image in its input dtype (else float32)."""
    return isinstance(op, Flip)


def select_gated(op: AugmentOp) -> bool:
    """Whether ``op`` is cheap pixelwise work, better computed and selected away by its coin.

    Inside an XLA cluster a skipped branch still copies image and mask out of the
    conditional, and a branch boundary stops XLA fusing the op with its neighbours; for a
    flip or an offset the work itself costs less than that. (Contrast's mean is a full
    reduction: measured cheaper behind its coin.)
    """
    return isinstance(op, Flip | Brightness)


@functools.singledispatch
def _kernel(op: AugmentOp, compiled: bool) -> Kernel:
    raise TypeError(f"augmentation op {type(op).__name__} has no kernel")


class _StatelessSeed(keras.random.SeedGenerator):
    """A SeedGenerator look-alike whose draws are pure functions of a (2,) seed tensor."""

    def __init__(self, seed: tf.Tensor) -> None:  # no super(): no state variable wanted
        self._base = seed
        self._draws = 0

    def next(self, ordered: bool = True) -> tf.Tensor:
        self._draws += 1
        return tf.random.experimental.stateless_fold_in(self._base, self._draws)


def _layer_dual(layer: Any) -> DualFn:
    """A Keras image layer as a dual kernel: one draw moves image and mask alike."""

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = as_float(image)
        data = {"images": image, "segmentation_masks": mask}
        t = layer.get_random_transformation(data, training=True, seed=_StatelessSeed(seed))
        return layer.transform_images(image, t), layer.transform_segmentation_masks(mask, t)

    return apply


def _layer_image(layer: Any) -> ImageFn:
    """A Keras image layer as an image-only kernel."""

    def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        t = layer.get_random_transformation(
            {"images": image}, training=True, seed=_StatelessSeed(seed)
        )
        return layer.transform_images(image, t)

    return apply


@_kernel.register
def _flip(op: Flip, compiled: bool) -> DualFn:
    axes = {"horizontal": [2], "vertical": [1], "horizontal_and_vertical": [1, 2]}[op.mode]

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.reverse(image, axes), tf.reverse(mask, axes)

    return apply


def reflect(v: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """Mirror coordinates outside [0, n-1] back inside (symmetric about the pixel edges).

    One bounce on each side (enough for any scale/rotation the affine op allows; anything
    further is clamped): two selects, several times cheaper than a floormod per pixel.
    """
    v = tf.where(v < -0.5, -1.0 - v, v)
    v = tf.where(v > n - 0.5, 2.0 * n - 1.0 - v, v)
    return tf.clip_by_value(v, 0.0, n - 1.0)


def warp(image: tf.Tensor, mask: tf.Tensor, m: Sequence[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """Resample [1,H,W,C] image (bilinear) and mask (nearest) at in = M @ out, reflect fill.

    Four gathers and a lerp: XLA compiles this into one loop, about twice as fast on a CPU as
    ImageProjectiveTransformV3 (same result to 1e-4 on average). A uint8 image is gathered
    as uint8 (a quarter of the bytes), the lerp is float32.
    """
    shape = tf.shape(image)
    hi, wi = shape[1], shape[2]
    h, w = tf.cast(hi, tf.float32), tf.cast(wi, tf.float32)
    yy, xx = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
    sx = reflect(m[0] * xx + m[1] * yy + m[2], w)
    sy = reflect(m[3] * xx + m[4] * yy + m[5], h)
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    x0i, y0i = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1i, y1i = tf.minimum(x0i + 1, wi - 1), tf.minimum(y0i + 1, hi - 1)
    flat = tf.reshape(image, [hi * wi, -1])

    def at(yi: tf.Tensor, xi: tf.Tensor) -> tf.Tensor:
        return as_float(tf.gather(flat, yi * wi + xi))

    top = at(y0i, x0i) * (1.0 - fx) + at(y0i, x1i) * fx
    bottom = at(y1i, x0i) * (1.0 - fx) + at(y1i, x1i) * fx
    out = (top * (1.0 - fy) + bottom * fy)[None]
    near = tf.cast(tf.round(sy), tf.int32) * wi + tf.cast(tf.round(sx), tf.int32)
    out_mask = tf.gather(tf.reshape(mask, [hi * wi, -1]), near)[None]
    return out, out_mask


def projective_warp(
    image: tf.Tensor, mask: tf.Tensor, m: Sequence[tf.Tensor]
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`warp` with TF's fused kernel: faster than the gathers when not XLA-compiled."""
    matrix = tf.stack([*m, 0.0, 0.0])[None]
    out = [
        tf.raw_ops.ImageProjectiveTransformV3(
            images=as_float(x),
            transforms=matrix,
            output_shape=tf.shape(image)[1:3],
            fill_value=0.0,
            interpolation=method,
            fill_mode="REFLECT",
        )
        for x, method in ((image, "BILINEAR"), (mask, "NEAREST"))
    ]
    return out[0], out[1]


@_kernel.register
def _affine(op: Affine, compiled: bool) -> DualFn:
    """Like albumentations' ShiftScaleRotate: one draw of all three, one resampling."""
    resample = warp if compiled else projective_warp

    def apply(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        draws = tf.random.stateless_uniform([4], seed, -1.0, 1.0)
        zoom = 1.0 + op.scale * draws[0]
        angle = op.degrees * np.pi / 180.0 * draws[1]
        h = tf.cast(tf.shape(image)[1], tf.float32)
        w = tf.cast(tf.shape(image)[2], tf.float32)
        # Output pixel -> input pixel: in = c + R(-angle) (out - c - shift) / zoom.
        cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        ox = cx + op.translate * w * draws[2]
        oy = cy + op.translate * h * draws[3]
        m = [cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy]
        return resample(image, mask, m)

    return apply


@_kernel.register
def _rotate(op: Rotate, compiled: bool) -> DualFn:
    return _layer_dual(
        keras.layers.RandomRotation(op.degrees / 360.0, fill_mode=op.fill_mode, **_F32)
    )


@_kernel.register
def _scale(op: Scale, compiled: bool) -> DualFn:
    # width_factor=None keeps the aspect ratio: one isotropic scale per sample.
    f = op.factor
    return _layer_dual(keras.layers.RandomZoom((-f, f), fill_mode=op.fill_mode, **_F32))


@_kernel.register
def _translate(op: Translate, compiled: bool) -> DualFn:
    f = op.fraction
    return _layer_dual(keras.layers.RandomTranslation(f, f, fill_mode=op.fill_mode, **_F32))


@_kernel.register
def _saturation(op: Saturation, compiled: bool) -> ImageFn:
    return _layer_image(keras.layers.RandomSaturation(op.factor, value_range=(0, 255), **_F32))


@_kernel.register
def _brightness(op: Brightness, compiled: bool) -> ImageFn:
    """Add a per-sample offset in [-factor, factor] * 255 (as keras.layers.RandomBrightness)."""

    def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return image + 255.0 * tf.random.stateless_uniform([], seed, -op.factor, op.factor)

    return apply


@_kernel.register
def _contrast(op: Contrast, compiled: bool) -> ImageFn:
    """Scale each channel about its mean by [1 - factor, 1 + factor] (as RandomContrast)."""

    def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        c = tf.random.stateless_uniform([], seed, 1.0 - op.factor, 1.0 + op.factor)
        mean = tf.reduce_mean(image, axis=[1, 2], keepdims=True)
        return (image - mean) * c + mean

    return apply


@_kernel.register
def _hue(op: Hue, compiled: bool) -> ImageFn:
    """tf.image.adjust_hue: one fused kernel."""

    def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        delta = tf.random.stateless_uniform([], seed, -op.factor, op.factor)
        return tf.image.adjust_hue(image / 255.0, delta) * 255.0

    return apply


@_kernel.register
def _blur(op: Blur, compiled: bool) -> ImageFn:
    """Two 1-D passes of shifted slices.

    Plain slices and multiply-adds: several times faster on a CPU than a depthwise
    convolution of the same kernel (measured 13 vs 36 ms at 384 px).
    """
    k, (lo, hi) = op.kernel_size, op.sigma
    r = k // 2

    def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
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
        return out

    return apply


def gaussian(count: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``count`` standard normals [count]: Box-Muller on two 16-bit uniforms per 32-bit draw.

    ~3x cheaper on a CPU than ``stateless_normal`` (one Philox word gives two normals, and
    log/sqrt/sin/cos run vectorised). Uniforms at 16-bit resolution: the radius reaches
    4.85 sigma at most (the tails beyond, p ~ 1e-6, are cut); otherwise exact.
    """
    half = (count + 1) // 2
    bits = tf.random.stateless_uniform([half], seed, dtype=tf.int32, minval=None, maxval=None)
    low = tf.cast(tf.bitwise.bitwise_and(bits, 0xFFFF), tf.float32)
    high = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 16), 0xFFFF), tf.float32)
    radius = tf.sqrt(-2.0 * tf.math.log((low + 0.5) * (1.0 / 65536.0)))
    angle = high * (2.0 * np.pi / 65536.0)
    return tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], 0)[:count]


@_kernel.register
def _noise(op: Noise, compiled: bool) -> ImageFn:
    """One Gaussian value per pixel (:func:`gaussian`), the same on the three channels.

    Luminance noise, like albumentations' ``per_channel=False``: a third of the normals of
    per-channel noise.
    """

    def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        fold = tf.random.experimental.stateless_fold_in
        sigma = tf.random.stateless_uniform([], fold(seed, 1), 0.0, op.std)
        shape = tf.concat([tf.shape(image)[:-1], [1]], axis=0)
        normals = gaussian(tf.reduce_prod(shape), fold(seed, 2))
        return image + tf.reshape(normals, shape) * sigma

    return apply
