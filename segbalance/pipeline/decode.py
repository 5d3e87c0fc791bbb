"""One decode path for every accepted file: PNG/JPEG/BMP (8/16-bit, gray/RGB/RGBA) and TIFF.

Images come out as float32 RGB in 0..255 (what every model takes; uint8 for the training
stream, whose augmentation starts from uint8), masks as float32 {0, 1} with one channel.
8-bit files decode as uint8 (exact 0..255); 16-bit PNGs, recognised by their header, as
uint16 scaled by 1/257 (rounded when uint8 is asked for). TensorFlow has no TIFF decoder:
``.tif``/``.tiff`` paths (only those) go through PIL in a ``tf.numpy_function``, chosen by
``tf.cond`` on the extension, so the common formats never leave the graph.

Masks are binarised by their manifest row's ``mask_rule`` (``<plane>>T``, see
:mod:`segbalance.data.check`, which applies the same rule with PIL to record the coverage):
the plane (gray, red, green, blue, alpha, or ``any``, the brightest of the three colours)
on the 0..255 scale, above T. Without a rule the legacy one, ``any>0``, applies. Mask JPEGs
decode with the accurate IDCT, the one PIL uses, so thresholds see the same values prepare
saw. Masks are resized with nearest-neighbour so they stay binary (before the rule: the
same pixels, for passes at the training size); images bilinearly with
antialiasing; the training stream decodes a JPEG image at 1/2, 1/4 or 1/8 scale when it is
at least that many times the training size (:func:`jpeg_ratios`; within a few grey levels
of a full decode, see tests/test_streaming.py). Images are turned by their EXIF
orientation (:mod:`segbalance.data.orientation`; the manifest records it), so pixels are
those a viewer shows.

Multiclass manifests (``Manifest.classes`` set, rows ruled ``class-value``/``class-color``)
decode masks to float32 [H, W, 1] class *indices* (0..K-1, 255 = ignored), read by
:func:`segbalance.label_masks.read_label_mask` in a ``tf.numpy_function``: the very reader that
prepare checked them with. They are resized with nearest-neighbour as well.

Example:
    >>> image, mask = decode_pair("a.png", "a_mask.png", (256, 256))  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from segbalance.classes import ClassSet
from segbalance.data.mask_rules import LEGACY_RULES, PLANES
from segbalance.data.orientation import read_orientation
from segbalance.errors import UserError
from segbalance.label_masks import read_label_mask

_TIFF = r"(?i).*\.tiff?"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_LEGACY = "^(" + "|".join(re.escape(r) for r in LEGACY_RULES) + "|)$"  # and empty
# plane name -> channel of [r, g, b, alpha, brightest]; gray is channel 0 (gray is tiled)
_PLANE_INDEX = (0, 0, 1, 2, 3, 4)


def _pil_decode(path: bytes | np.ndarray) -> np.ndarray:
    """Decode a TIFF with PIL into float32 HxWxC in 0..255 (numpy_function body)."""
    name = _text(path)
    with Image.open(name) as opened:
        mode = opened.mode
        # a palette's transparency entry becomes alpha, as libpng expands a tRNS
        rgba = "transparency" in opened.info
        arr = np.asarray(opened.convert("RGBA" if rgba else "RGB") if mode == "P" else opened)
    if arr.dtype in (np.bool_, np.uint8):
        out = arr.astype(np.float32) * (255.0 if arr.dtype == np.bool_ else 1.0)
    elif arr.dtype.kind in "ui" and arr.itemsize <= 4 and arr.min(initial=0) >= 0:
        if arr.max(initial=0) > 65535:
            raise ValueError(f"{name}: TIFF values above 16 bits (mode {mode})")
        # PIL reads 16-bit TIFFs as I;16 (uint16) or I (int32): 65535 -> 255 as in TF.
        out = arr.astype(np.float32) / 257.0
    else:
        raise ValueError(f"{name}: unsupported TIFF sample type {arr.dtype} (mode {mode})")
    return out[..., None] if out.ndim == 2 else out


def _is_png16(data: tf.Tensor) -> tf.Tensor:
    """A 16-bit PNG says so in its header (IHDR bit depth, byte 24)."""
    return tf.logical_and(
        tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE),
        tf.equal(tf.strings.substr(data, 24, 1), b"\x10"),
    )


def _decode_unit(
    path: tf.Tensor, accurate_jpeg: bool = False, size: Sequence[int] | None = None
) -> tf.Tensor:
    """Decode any accepted file into float32 [H, W, C] in 0..255, C in 1..4.

    ``accurate_jpeg``: JPEGs with the accurate integer IDCT (PIL's), bit-identical to what
    prepare checked; the default fast one differs by a few levels. ``size``: resize to
    (H, W) with nearest neighbour in the decoded dtype, before the float32 cast: it picks
    pixels, so it commutes with the cast and with any per-pixel rule after it, and every
    later pass touches the training size instead of the file's (a 1536 px mask: 2.4 M
    pixels a pass against 147 k at 384 px).
    """
    fit = (lambda x: x) if size is None else (lambda x: resize_mask(x, size))

    def eight_bit(data: tf.Tensor) -> tf.Tensor:
        if not accurate_jpeg:
            return tf.io.decode_image(data, expand_animations=False)
        return tf.cond(
            tf.equal(tf.strings.substr(data, 0, 3), _JPEG_SIGNATURE),
            lambda: tf.io.decode_jpeg(data, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, expand_animations=False),
        )

    def native() -> tf.Tensor:
        data = tf.io.read_file(path)
        # 16-bit: 65535 -> 255; 8-bit: uint8 cast once (exact integers, the cheapest path)
        return tf.cond(
            _is_png16(data),
            lambda: tf.cast(fit(tf.io.decode_png(data, dtype=tf.uint16)), tf.float32) / 257.0,
            lambda: tf.cast(fit(eight_bit(data)), tf.float32),
        )

    def tiff() -> tf.Tensor:
        out = tf.numpy_function(_pil_decode, [path], tf.float32, stateful=False)
        return fit(tf.ensure_shape(out, [None, None, None]))

    is_tiff = tf.strings.regex_full_match(path, _TIFF)
    return tf.ensure_shape(tf.cond(is_tiff, tiff, native), [None, None, None])


def _text(value: bytes | np.ndarray | str) -> str:
    raw = value.item() if isinstance(value, np.ndarray) else value  # eager: a 0-d array
    return raw if isinstance(raw, str) else raw.decode("utf-8", "surrogateescape")


def _read_orientation(path: bytes | np.ndarray) -> np.int32:
    return np.int32(read_orientation(_text(path)))


def exif_orientation(path: tf.Tensor) -> tf.Tensor:
    """The file's EXIF orientation (1-8) as an int32 scalar tensor (reads the header only).

    Read with PIL, as prepare reads it (TensorFlow's decoders ignore EXIF). It holds the GIL
    (~0.5 ms a file), so training reads the manifest's column instead; one-off decodes use it.
    """
    value = tf.numpy_function(_read_orientation, [path], tf.int32, stateful=False)
    return tf.ensure_shape(value, [])


def apply_orientation(x: tf.Tensor, orientation: tf.Tensor | int) -> tf.Tensor:
    """Turn [H, W, C] pixels as EXIF ``orientation`` says a viewer shows them.

    The same eight cases as PIL's ``ImageOps.exif_transpose``: 2 mirror, 3 rotate 180,
    4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise.
    """
    branches = [
        lambda: x,
        lambda: tf.reverse(x, [1]),
        lambda: tf.image.rot90(x, 2),
        lambda: tf.reverse(x, [0]),
        lambda: tf.transpose(x, [1, 0, 2]),
        lambda: tf.image.rot90(x, 3),
        lambda: tf.reverse(tf.transpose(x, [1, 0, 2]), [0, 1]),
        lambda: tf.image.rot90(x, 1),
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.ensure_shape(tf.switch_case(index, branches), [None, None, None])


def _to_rgb(unit: tf.Tensor) -> tf.Tensor:
    """Gray, gray+alpha, RGB or RGBA -> RGB (alpha dropped, gray replicated), any dtype."""
    channels = tf.shape(unit)[-1]
    rgb = tf.cond(
        channels < 3,
        lambda: tf.tile(unit[..., :1], [1, 1, 3]),
        # RGB passes as it is: slicing it would copy every pixel
        lambda: tf.cond(tf.equal(channels, 3), lambda: unit, lambda: unit[..., :3]),
    )
    return tf.ensure_shape(rgb, [None, None, 3])


def jpeg_ratios(heights: np.ndarray, widths: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Per row, the JPEG decode scale (1, 2, 4 or 8) of images ``heights`` x ``widths``.

    The largest r at which the source (the manifest's sizes; a turn swaps both alike) is
    still at least ``size`` in both dimensions: the resize after it only shrinks. Size 0: 1.
    """
    h, w = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    ratios = np.ones(h.shape, np.int32)
    for r in (2, 4, 8):
        ratios[(h // r >= int(size[0])) & (w // r >= int(size[1]))] = r
    return ratios


def _decode_8bit(data: tf.Tensor, ratio: tf.Tensor | None) -> tf.Tensor:
    """uint8 [H, W, C] of an 8-bit file; a JPEG at 1/``ratio`` scale when ``ratio`` > 1.

    libjpeg scales in the IDCT (DCT-domain averaging): 2-8x fewer pixels to decode and
    resize, for an image within a few grey levels of full decode + antialiased resize.
    """
    full = lambda: tf.io.decode_image(data, expand_animations=False)  # noqa: E731
    if ratio is None:
        return full()
    scaled = [lambda r=r: tf.io.decode_jpeg(data, ratio=r) for r in (2, 4, 8)]
    reduce = tf.logical_and(
        tf.greater(ratio, 1), tf.equal(tf.strings.substr(data, 0, 3), _JPEG_SIGNATURE)
    )
    branch = tf.where(ratio >= 8, 2, tf.where(ratio >= 4, 1, 0))  # ratio 2, 4, 8
    out = tf.cond(reduce, lambda: tf.switch_case(branch, scaled), full)
    return tf.ensure_shape(out, [None, None, None])


def to_uint8(x: tf.Tensor) -> tf.Tensor:
    """Round to whole values in 0..255, as uint8 (uint8 passes; exact for masks)."""
    rounded = x if x.dtype == tf.uint8 else tf.clip_by_value(tf.round(x), 0.0, 255.0)
    return tf.cast(rounded, tf.uint8)


def decode_image(
    path: tf.Tensor,
    orientation: tf.Tensor | int | None = None,
    jpeg_ratio: tf.Tensor | int | None = None,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """Read an image file as RGB [H, W, 3] in 0..255, turned as viewers show it.

    Args:
        orientation: the image's EXIF orientation as prepare recorded it (the manifest's
            ``orientation``); None reads it from the file (one-off decodes, predict).
        jpeg_ratio: decode JPEGs at 1/ratio scale (:func:`jpeg_ratios`); None or 1: full.
        dtype: float32, or uint8 (the train stream): 16-bit files and TIFFs rounded.
    """
    turn = exif_orientation(path) if orientation is None else tf.cast(orientation, tf.int32)
    ratio = None if jpeg_ratio is None else tf.cast(jpeg_ratio, tf.int32)
    wide = to_uint8 if dtype == tf.uint8 else tf.identity  # 16-bit and TIFF: float32

    def native() -> tf.Tensor:
        data = tf.io.read_file(path)
        png16 = lambda: tf.cast(tf.io.decode_png(data, dtype=tf.uint16), tf.float32) / 257.0  # noqa: E731
        eight_bit = lambda: tf.cast(_decode_8bit(data, ratio), dtype)  # noqa: E731
        return tf.cond(_is_png16(data), lambda: wide(png16()), eight_bit)

    def tiff() -> tf.Tensor:
        return wide(tf.numpy_function(_pil_decode, [path], tf.float32, stateful=False))

    # One turn and channel fix after the branches, not one per branch: every branch is a
    # function that tf.data instantiates and optimises anew for each iterator (seconds).
    unit = tf.cond(tf.strings.regex_full_match(path, _TIFF), tiff, native)
    unit = tf.ensure_shape(unit, [None, None, None])
    # Most photos need no turn: one cheap cond instead of the eight-way switch.
    turned = tf.cond(tf.equal(turn, 1), lambda: unit, lambda: apply_orientation(unit, turn))
    out = _to_rgb(tf.ensure_shape(turned, [None, None, None]))
    return tf.ensure_shape(out, [None, None, 3])


def _plane(unit: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """Plane ``index`` of [r, g, b, alpha, brightest] as [H, W] (gray tiled, alpha 255 if absent).

    Only the chosen plane is computed: building all five and gathering one cost ~4 ms a
    384 px mask, more than decoding it.
    """
    channels = tf.shape(unit)[-1]
    gray = channels < 3
    # colour c: channel c of RGB(A), channel 0 of gray; alpha: the last of LA/RGBA
    channel = tf.where(tf.equal(index, 3), channels - 1, tf.where(gray, 0, index))
    kind = tf.where(
        tf.equal(index, 4), 2, tf.where(tf.equal(index, 3) & tf.equal(channels % 2, 1), 1, 0)
    )
    branches = [
        lambda: unit[..., channel],
        lambda: tf.fill(tf.shape(unit)[:-1], 255.0),
        lambda: tf.reduce_max(unit[..., : tf.where(gray, 1, 3)], axis=-1),
    ]
    return tf.ensure_shape(tf.switch_case(kind, branches), [None, None])


def apply_mask_rule(unit: tf.Tensor, rule: tf.Tensor | str) -> tf.Tensor:
    """Binarise a decoded mask ([H, W, C] in 0..255) by a rule: f32 [H, W, 1] in {0, 1}."""
    rule = tf.strings.regex_replace(rule, _LEGACY, "any>0")
    parts = tf.strings.split(rule, ">")
    hit = tf.equal(tf.constant(PLANES), parts[0])
    check = tf.debugging.assert_equal(
        tf.reduce_sum(tf.cast(hit, tf.int32)), 1, message="unknown mask rule"
    )
    with tf.control_dependencies([check]):
        index = tf.reduce_sum(tf.where(hit, tf.constant(_PLANE_INDEX), 0))
    plane = _plane(unit, index)[..., None]
    return tf.cast(plane > tf.strings.to_number(parts[-1], tf.float32), tf.float32)


def decode_label_mask(path: tf.Tensor, rule: tf.Tensor | str, classes: ClassSet) -> tf.Tensor:
    """Read a multiclass mask as float32 [H, W, 1] class indices (255: ignored).

    Raises (in the graph): InvalidArgumentError naming a file it cannot read by a class rule.
    """

    def read(path_value: Any, rule_value: Any) -> np.ndarray:
        name, how = _text(path_value), _text(rule_value)
        try:
            labels = read_label_mask(name, classes, how)
        except (OSError, SyntaxError, ValueError) as err:  # ValueError: InvalidArgumentError
            raise ValueError(f"{name}: cannot read the label mask ({err})") from err
        return labels.astype(np.float32)[..., None]

    out = tf.numpy_function(read, [path, rule], tf.float32, stateful=False)
    return tf.ensure_shape(out, [None, None, 1])


def decode_mask(
    path: tf.Tensor,
    rule: tf.Tensor | str | None = None,
    classes: ClassSet | None = None,
    size: Sequence[int] | None = None,
) -> tf.Tensor:
    """Read a mask file as float32 [H, W, 1] by its manifest ``rule``.

    Binary (``classes`` None): {0, 1}; ``None`` is the legacy rule, any of the first three
    channels > 0. Multiclass: class indices (:func:`decode_label_mask`). ``size``: (H, W)
    to resize to with nearest neighbour (:func:`resize_mask`); a binary mask is resized
    before its rule, which gives the same pixels for less work.
    """
    if classes is not None:
        labels = decode_label_mask(path, "class-value" if rule is None else rule, classes)
        return labels if size is None else resize_mask(labels, size)
    unit = _decode_unit(path, accurate_jpeg=True, size=size)
    mask = apply_mask_rule(unit, "any>0" if rule is None else rule)
    return mask if size is None else tf.ensure_shape(mask, [int(size[0]), int(size[1]), 1])


def _same_size(x: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    shape = tf.shape(x)
    return tf.logical_and(tf.equal(shape[-3], size[0]), tf.equal(shape[-2], size[1]))


def resize_image(image: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """Bilinear, antialiased resize to ``size`` (H, W), a no-op when there; uint8 stays uint8."""
    hw = (int(size[0]), int(size[1]))

    def resized() -> tf.Tensor:
        out = tf.image.resize(image, hw, method="bilinear", antialias=True)
        return to_uint8(out) if image.dtype == tf.uint8 else out

    out = tf.cond(_same_size(image, hw), lambda: tf.identity(image), resized)
    return tf.ensure_shape(out, [*image.shape[:-3], hw[0], hw[1], image.shape[-1]])


def resize_mask(mask: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """Nearest-neighbour resize, so a binary mask stays binary (and class indices exact)."""
    hw = (int(size[0]), int(size[1]))
    out = tf.cond(
        _same_size(mask, hw),
        lambda: tf.identity(mask),
        lambda: tf.image.resize(mask, hw, method="nearest"),
    )
    return tf.ensure_shape(out, [*mask.shape[:-3], hw[0], hw[1], mask.shape[-1]])


def decode_pair(
    image_path: tf.Tensor,
    mask_path: tf.Tensor,
    image_size: Sequence[int],
    mask_rule: tf.Tensor | str | None = None,
    orientation: tf.Tensor | int | None = None,
    classes: ClassSet | None = None,
    jpeg_ratio: tf.Tensor | int | None = None,
    dtype: tf.DType = tf.float32,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode, binarise (or label) and resize one (image, mask) pair to ``image_size``.

    Masks are read as stored (prepare refuses a mask with an EXIF orientation); the image
    is turned by ``orientation`` (see :func:`decode_image`).

    Args:
        image_path: scalar string tensor.
        mask_path: scalar string tensor.
        image_size: (height, width) of the model input.
        mask_rule: the row's ``mask_rule`` (scalar string); None is the legacy ``any>0``.
        classes: the manifest's classes (multiclass); None for binary.
        jpeg_ratio: decode a JPEG image at 1/ratio scale (:func:`jpeg_ratios`); masks are
            always decoded in full, then resized (nearest) before their rule.
        dtype: of the image, float32 or uint8 (rounded after a resize: :func:`decode_image`).

    Returns:
        image [H, W, 3] in 0..255 and mask f32[H, W, 1] in {0, 1} (multiclass: class
        indices, 255 ignored).
    """
    image = resize_image(decode_image(image_path, orientation, jpeg_ratio, dtype), image_size)
    return image, decode_mask(mask_path, mask_rule, classes, image_size)


def load_image(path: str | Path) -> np.ndarray:
    """Read one image for prediction as uint8 RGB [H, W, 3], through the training decoder.

    Raises:
        UserError: the file is missing or not a decodable image.
    """
    try:
        image = decode_image(tf.constant(str(path)))
    except (tf.errors.OpError, ValueError) as err:
        msg = getattr(err, "message", str(err)).strip().splitlines()[0]
        raise UserError(
            f"cannot read image {path}: {msg}. Use a PNG, JPEG, BMP or TIFF file."
        ) from err
    return np.asarray(tf.cast(tf.round(image), tf.uint8))


def preprocess_for_model(image: np.ndarray | tf.Tensor, image_size: Sequence[int]) -> np.ndarray:
    """Resize an RGB image (uint8 or float 0..255, [H,W,3] or [B,H,W,3]) as training does.

    Returns:
        float32 array in 0..255 of shape [..., image_size[0], image_size[1], 3].
    """
    x = tf.convert_to_tensor(image)
    x = tf.cast(x, tf.float32)
    return np.asarray(resize_image(x, image_size))
