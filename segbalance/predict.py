"""Masks, probabilities and overlays for new images, at each image's original size.

Inputs are files, folders (searched recursively, image extensions only, hidden names
skipped) or glob patterns. Every image is decoded by the training decoder, resized to the
model's training size, run through the model in batches; its logits are resized
bilinearly back to the image's own height and width and thresholded there
(``sigmoid(logit) > t``), so a mask lines up pixel for pixel with its image.

Outputs mirror the inputs' paths below their common folder, each named after its input's
full file name plus ``.png`` (``a.jpg`` -> ``a.jpg.png``, ``a.png`` -> ``a.png.png``), so
no two inputs share an output::

    OUT/masks/<rel>/<name>.png          0/255 8-bit masks
    OUT/overlays/<rel>/<name>.png       image with a tinted mask and its contour (--overlay)
    OUT/probabilities/<rel>/<name>.png  foreground probability x 255 (--probabilities)

A multiclass model (its file carries the classes) takes the most probable class per pixel
(argmax of the resized logits, no threshold) and writes::

    OUT/masks/<rel>/<name>.png                  label masks: each pixel its class's value
    OUT/colors/<rel>/<name>.png                 each pixel its class's colour (--colors)
    OUT/overlays/<rel>/<name>.png               classes tinted and outlined in their colours,
                                                a legend of class names below (--overlay)
    OUT/probabilities/<class>/<rel>/<name>.png  each class's probability x 255

``OUT`` is checked before any work (a folder, writable, holding no file of the user's
that an output would replace) and carries a ``.segbalance`` marker when predict created
it; files in marked folders (earlier outputs, wherever ``--out`` was) are never inputs.
Files that cannot be read (empty, not an image, damaged, over the pixel cap) are reported
in plain words and skipped; the rest of the batch goes on. Every file is written
atomically; a write that fails (a full disk) stops the run with the count written.

Example:
    >>> result = predict("best.keras", ["photos/", "extra/*.jpg"], "out", overlay=True)
    ...  # doctest: +SKIP
    >>> len(result.written), result.failed  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from segbalance.artifacts import (
    ModelMeta,
    NoMetadataError,
    check_image_size,
    load_model,
    read_meta,
    refuse_threshold,
)
from segbalance.classes import ClassSet
from segbalance.data.check import DEFAULT_MAX_PIXELS
from segbalance.errors import Problem, UserError
from segbalance.io import atomic_path, check_output_path
from segbalance.metrics import logit_threshold
from segbalance.overlays import class_overlay, overlay_image
from segbalance.pipeline.decode import preprocess_for_model
from segbalance.predict_inputs import (
    EARLIER,
    OUTPUT_DIRS,
    Outputs,
    check_targets,
    clashes,
    expand_inputs,
    make_out,
    output_names,
    read_input,
)


@dataclass
class PredictResult:
    """What ``predict`` did: one entry per written input, one problem per skipped one."""

    written: list[dict[str, str]] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    ignored: list[Problem] = field(default_factory=list)  # earlier outputs, non-image files


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 array as PNG atomically."""
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")


class _Predictor:
    """Holds the model and turns its logits into outputs at each image's size."""

    def __init__(
        self, model: Any, image_size: tuple[int, int], threshold: float, spec: ClassSet | None
    ) -> None:
        self.model = model
        self.image_size = image_size
        self.cut = logit_threshold(threshold)
        self.spec = spec

        @tf.function(reduce_retracing=True)
        def resize(logits: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
            return tf.image.resize(logits[None], size, method="bilinear")[0]

        self.resize = resize

    def logits(self, images: list[np.ndarray]) -> np.ndarray:
        batch = np.stack([preprocess_for_model(im, self.image_size) for im in images])
        return np.asarray(self.model(batch, training=False), np.float32)

    def outputs(self, image: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """At the image's own size: binary (mask bool[h, w], probability f[h, w]);
        multiclass (class indices uint8 [h, w], probabilities f[h, w, K])."""
        full = np.asarray(self.resize(logits, np.array(image.shape[:2], np.int32)))
        if self.spec is None:
            full = full[..., 0]
            return full > self.cut, 0.5 + 0.5 * np.tanh(0.5 * full)  # sigmoid, no overflow
        shifted = np.exp(full - full.max(axis=-1, keepdims=True))
        return full.argmax(axis=-1).astype(np.uint8), shifted / shifted.sum(-1, keepdims=True)


def _model(
    model_path: str | Path, image_size: Sequence[int] | None, threshold: float | None
) -> tuple[Any, ModelMeta]:
    """The model and its metadata; a plain Keras model takes both flags as metadata."""
    fallback = None
    if image_size is not None and threshold is not None:
        size = check_image_size(list(image_size))
        fallback = ModelMeta(image_size=size, groups=["foreground"], threshold=threshold)
    model, meta = load_model(model_path, fallback=fallback)
    if image_size is not None and tuple(meta.image_size) != tuple(image_size):
        h, w = meta.image_size
        raise UserError(
            f"--image-size {' '.join(map(str, image_size))} is not the {h} {w} that "
            f"{model_path} was trained at; drop --image-size (it is for plain Keras models)"
        )
    return model, meta


def _check_args(batch_size: int, threshold: float | None, image_size: Any, pixels: int) -> None:
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if pixels < 1:
        raise UserError(f"--max-pixels must be >= 1, got {pixels}")
    if threshold is not None:
        logit_threshold(threshold)  # raises naming the value
    if image_size is not None:
        try:
            check_image_size(list(image_size))
        except ValueError as err:
            raise UserError(f"--image-size: {err}") from err


def _classes(model_path: str | Path, colors: bool, threshold: float | None) -> ClassSet | None:
    """A segbalance model's classes (None: binary or a plain Keras model), flags checked."""
    try:
        meta: ModelMeta | None = read_meta(model_path)
    except NoMetadataError:  # a plain Keras model: binary, or refused by load_model
        meta = None
    spec = None if meta is None else meta.class_set
    if spec is None and colors:
        raise UserError(
            f"--colors is for multiclass models; {model_path} is binary (its masks are 0/255): "
            "drop --colors, or use --overlay"
        )
    if meta is not None:
        refuse_threshold(meta, threshold, model_path)
    return spec


def predict(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    overlay: bool = False,
    probabilities: bool = False,
    colors: bool = False,
    threshold: float | None = None,
    image_size: Sequence[int] | None = None,
    batch_size: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> PredictResult:
    """Write masks (and optionally overlays/probabilities) for every input image.

    Args:
        model_path: a ``.keras`` file written by ``segbalance train`` (or a plain Keras
            model, given ``image_size`` and ``threshold``).
        inputs: files, folders (recursive) or glob patterns.
        out: output folder (created and marked).
        overlay: also write the image with the mask tinted and outlined (multiclass: each
            class in its colour, with a legend of class names below).
        probabilities: also write 8-bit probability maps (multiclass: one per class).
        colors: also write colour masks (multiclass models only).
        threshold: probability threshold; default the model's (binary models only).
        image_size: (height, width) of a plain Keras model; must match a segbalance one.
        batch_size: images per forward pass.
        max_pixels: skip larger images (decompression bombs, out of memory).
        progress: show a progress bar on stderr.

    Raises:
        UserError: bad arguments, an unusable model or --out, no input gave any file, or
            a write failed (the message says how many were written).
    """
    _check_args(batch_size, threshold, image_size, max_pixels)
    out = Path(out)
    check_output_path(out, "--out", folder=True)
    files, names, result = _plan(inputs, out)
    spec = _classes(model_path, colors, threshold)
    where = Outputs(out, overlay, probabilities, colors, tuple(spec.names) if spec else ())
    check_targets(where, names)
    model, meta = _model(model_path, image_size, threshold)
    t = float(meta.threshold if threshold is None else threshold)
    size = (int(meta.image_size[0]), int(meta.image_size[1]))
    predictor = _Predictor(model, size, t, meta.class_set)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
    pairs = list(zip(files, names, strict=True))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        loaded = [(f, n, read_input(f, max_pixels)) for f, n in chunk]
        good = [(f, n, im) for f, n, im in loaded if isinstance(im, np.ndarray)]
        result.failed += [im for _, _, im in loaded if isinstance(im, Problem)]
        if good:
            if not result.written:  # created only now: no empty --out when every input fails
                make_out(where)
            logits = predictor.logits([im for _, _, im in good])
            for (f, name, image), lg in zip(good, logits, strict=True):
                result.written.append(_write(predictor, f, where, name, image, lg, result))
        bar.update(len(chunk))
    bar.close()
    return result


def _plan(inputs: Sequence[str | Path], out: Path) -> tuple[list[Path], list[Path], PredictResult]:
    """The input files, their output names, and the result holding what was passed over."""
    files, problems, ignored = expand_inputs(inputs)
    # Outputs of an earlier run inside an input folder are not new inputs (marked or not).
    inside = tuple(os.path.realpath(out / d) + os.sep for d in OUTPUT_DIRS)
    old = [f for f in files if os.path.realpath(f).startswith(inside)]
    ignored += [Problem(str(f), EARLIER, "") for f in old]
    files = [f for f in files if f not in old]
    if not files:
        detail = "; ".join(f"{p.file}: {p.problem}" for p in problems)
        raise UserError(f"no input images found ({detail})")
    names = output_names(files)
    clash = clashes(names)
    problems += [
        Problem(str(files[i]), f"same output name as {files[j]}", "rename one of them")
        for i, j in clash.items()
    ]
    keep = [i for i in range(len(files)) if i not in clash]
    result = PredictResult(failed=problems, ignored=ignored)
    return [files[i] for i in keep], [names[i] for i in keep], result


Target = tuple[str, str, Callable[[], np.ndarray]]  # (result key, folder under --out, pixels)


def _targets(
    predictor: _Predictor, where: Outputs, image: np.ndarray, logits: np.ndarray
) -> list[Target]:
    """What one input's outputs are and where they go (pixels made only when written)."""
    mask, prob = predictor.outputs(image, logits)
    spec = predictor.spec
    if spec is None:
        targets: list[Target] = [("mask", "masks", lambda: mask.astype(np.uint8) * 255)]
        if where.overlay:
            targets.append(("overlay", "overlays", lambda: overlay_image(image, mask)))
        if where.probabilities:
            targets.append(("probabilities", "probabilities", lambda: np.round(prob * 255)))
        return targets
    values = np.array(spec.values, np.uint8)  # label masks hold the classes file's values
    targets = [("mask", "masks", lambda: values[mask])]
    if where.colors:
        targets.append(("colors", "colors", lambda: spec.palette()[mask]))
    if where.overlay:
        targets.append(("overlay", "overlays", lambda: class_overlay(image, mask, spec)))
    if where.probabilities:
        for k, name in enumerate(spec.names):
            make = partial(_probability_map, prob, k)
            targets.append((f"probabilities_{name}", f"probabilities/{name}", make))
    return targets


def _probability_map(prob: np.ndarray, k: int) -> np.ndarray:
    return np.round(prob[..., k] * 255)


def _write(
    predictor: _Predictor,
    source: Path,
    where: Outputs,
    name: Path,
    image: np.ndarray,
    logits: np.ndarray,
    result: PredictResult,
) -> dict[str, str]:
    """Write one input's outputs; a failed write (full disk) stops the run, cleanly."""
    written = {"input": str(source)}
    for key, kind, make in _targets(predictor, where, image, logits):
        path = where.out / kind / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_png(np.asarray(make()).astype(np.uint8), path)
        except OSError as err:
            raise UserError(
                f"cannot write {path} ({err.strerror or err}); {len(result.written)} input(s) "
                "were done before it, each file complete. Free space or choose another --out, "
                "then run again"
            ) from err
        written[key] = str(path)
    return written
