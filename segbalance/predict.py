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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from segbalance.artifacts import ModelMeta, check_image_size, load_model
from segbalance.data.check import DEFAULT_MAX_PIXELS
from segbalance.errors import Problem, UserError
from segbalance.io import MARKER, atomic_path, check_output_path, is_marked, mark_dir
from segbalance.metrics import logit_threshold
from segbalance.pipeline.decode import load_image, preprocess_for_model
from segbalance.predict_inputs import (
    EARLIER,
    MARKER_KIND,
    OUTPUT_DIRS,
    clashes,
    expand_inputs,
    output_names,
)

TINT = np.array([0, 220, 255], np.float32)  # cyan: distinct from skin and common polish
CONTOUR = np.array([255, 230, 0], np.uint8)  # yellow
TINT_ALPHA = 0.45
FIX_IMAGE = "re-export the image as PNG or JPEG, or remove it"


@dataclass
class PredictResult:
    """What ``predict`` did: one entry per written input, one problem per skipped one."""

    written: list[dict[str, str]] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    ignored: list[Problem] = field(default_factory=list)  # earlier outputs, non-image files


def _check_targets(out: Path, names: Sequence[Path], kinds: Sequence[str]) -> None:
    """Refuse outputs that would replace files in an --out that predict did not create."""
    for kind in kinds:
        if (out / kind).exists() and not (out / kind).is_dir():
            raise UserError(f"--out {out}: {out / kind} is a file, not a folder; move it")
    if not out.is_dir() or is_marked(out, MARKER_KIND):
        return
    # In a folder of the user's, an output folder predict made itself (marked) is predict's.
    mine = [k for k in kinds if not is_marked(out / k, MARKER_KIND)]
    taken = [out / k / n for k in mine for n in names if os.path.lexists(out / k / n)]
    if taken:
        raise UserError(
            f"--out {out} already holds {taken[0]} ({len(taken)} output(s) in all), and "
            f"segbalance did not create {out} (no {MARKER} file), so they may be your files; "
            "choose a new or empty --out, or move them"
        )


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 array as PNG atomically."""
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion (border pixels count as background)."""
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def overlay_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask tinted and its contour drawn (uint8 RGB, same size).

    Example:
        >>> overlay_image(np.zeros((4, 4, 3), np.uint8), np.eye(4, dtype=bool)).shape
        (4, 4, 3)
    """
    mask = mask.astype(bool)
    out = image.astype(np.float32)
    out[mask] = (1 - TINT_ALPHA) * out[mask] + TINT_ALPHA * TINT
    edge = mask & ~_erode(mask)
    for _ in range(max(0, min(mask.shape) // 256)):  # thicker contour on large images
        edge = edge | (~_erode(~edge) & mask)
    result = np.clip(np.round(out), 0, 255).astype(np.uint8)
    result[edge] = CONTOUR
    return result


class _Predictor:
    """Holds the model and writes the outputs of one batch."""

    def __init__(self, model: Any, image_size: tuple[int, int], threshold: float) -> None:
        self.model = model
        self.image_size = image_size
        self.cut = logit_threshold(threshold)

        @tf.function(reduce_retracing=True)
        def resize(logits: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
            return tf.image.resize(logits[None], size, method="bilinear")[0]

        self.resize = resize

    def logits(self, images: list[np.ndarray]) -> np.ndarray:
        batch = np.stack([preprocess_for_model(im, self.image_size) for im in images])
        return np.asarray(self.model(batch, training=False), np.float32)

    def outputs(self, image: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask bool[h, w], probability float[h, w]) at the image's own size."""
        full = np.asarray(self.resize(logits, np.array(image.shape[:2], np.int32)))[..., 0]
        return full > self.cut, 0.5 + 0.5 * np.tanh(0.5 * full)  # sigmoid, no overflow


def _damage(path: Path) -> str:
    """Why a file PIL could open does not decode, in PIL's words (plainer than TF's)."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError) as err:
        return f"damaged or truncated image ({err})"
    return "the image decoder cannot read it (damaged, or an unsupported variant)"


def _over_cap(shown: str, pixels: int, size: str, max_pixels: int) -> Problem:
    return Problem(
        shown,
        f"{size}{pixels / 1e6:.1f} Mpx is over the pixel cap {max_pixels / 1e6:.1f} Mpx",
        "downscale or tile it, or raise --max-pixels if the memory allows",
    )


def read_input(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | Problem:
    """One input as uint8 RGB, or a Problem in plain words (checked with PIL first).

    The header gives the size before any pixel is decoded, so a decompression bomb is
    refused without the memory it would take.
    """
    shown = str(path)
    try:
        if path.stat().st_size == 0:
            return Problem(shown, "empty file (0 bytes)", FIX_IMAGE)
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError as err:  # PIL's own cap, far above ours
        found = re.search(r"\((\d+) pixels\)", str(err))
        return _over_cap(shown, int(found.group(1)) if found else 0, "", max_pixels)
    except UnidentifiedImageError:
        return Problem(shown, "not an image (no known image format inside)", FIX_IMAGE)
    except OSError as err:
        return Problem(shown, f"cannot be read ({err.strerror or err})", "check the file")
    if width * height > max_pixels:
        return _over_cap(shown, width * height, f"{width}x{height} = ", max_pixels)
    try:
        return load_image(path)
    except (UserError, OSError):
        return Problem(shown, _damage(path), FIX_IMAGE)


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


def predict(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    overlay: bool = False,
    probabilities: bool = False,
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
        overlay: also write the image with the mask tinted and outlined.
        probabilities: also write 8-bit probability maps.
        threshold: probability threshold; default the model's.
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
    where = Outputs(out, overlay, probabilities)
    _check_targets(out, names, where.kinds)
    model, meta = _model(model_path, image_size, threshold)
    t = float(meta.threshold if threshold is None else threshold)
    predictor = _Predictor(model, (int(meta.image_size[0]), int(meta.image_size[1])), t)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
    pairs = list(zip(files, names, strict=True))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        loaded = [(f, n, read_input(f, max_pixels)) for f, n in chunk]
        good = [(f, n, im) for f, n, im in loaded if isinstance(im, np.ndarray)]
        result.failed += [im for _, _, im in loaded if isinstance(im, Problem)]
        if good:
            if not result.written:  # created only now: no empty --out when every input fails
                _make_out(out, where.kinds)
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


def _make_out(out: Path, kinds: Sequence[str]) -> None:
    """Create --out and mark it when it is new or empty (then no file in it is the user's).

    In a folder of the user's, the output folders predict creates (masks/, ...) are marked
    instead, so a second run may replace its own outputs there and nothing else.
    """
    try:
        fresh = not out.exists() or not any(out.iterdir())
        out.mkdir(parents=True, exist_ok=True)
        if fresh:
            mark_dir(out, MARKER_KIND)
            return
        for kind in kinds:
            if not (out / kind).exists():
                (out / kind).mkdir()
                mark_dir(out / kind, MARKER_KIND)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create it ({err.strerror or err})") from err


@dataclass(frozen=True)
class Outputs:
    """Where outputs go and which are written."""

    out: Path
    overlay: bool
    probabilities: bool

    @property
    def kinds(self) -> list[str]:
        return ["masks"] + ["overlays"] * self.overlay + ["probabilities"] * self.probabilities


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
    mask, prob = predictor.outputs(image, logits)
    written = {"input": str(source)}
    targets = [("mask", "masks", lambda: mask.astype(np.uint8) * 255)]
    if where.overlay:
        targets.append(("overlay", "overlays", lambda: overlay_image(image, mask)))
    if where.probabilities:
        targets.append(("probabilities", "probabilities", lambda: np.round(prob * 255)))
    for key, kind, make in targets:
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
