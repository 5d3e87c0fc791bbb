"""Masks, probabilities and overlays for new images, at each image's original size.

Inputs are files, folders (searched recursively, image extensions only) or glob
patterns. Every image is decoded by the training decoder, resized to the model's training
size, run through the model in batches; its logits are resized bilinearly back to the
image's own height and width and thresholded there (``sigmoid(logit) > t``), so a mask
lines up pixel for pixel with its image.

Outputs mirror the inputs' paths below their common folder::

    OUT/masks/<rel>/<stem>.png          0/255 8-bit masks
    OUT/overlays/<rel>/<stem>.png       image with a tinted mask and its contour (--overlay)
    OUT/probabilities/<rel>/<stem>.png  foreground probability x 255 (--probabilities)

Two inputs with the same stem in the same folder (``a.jpg`` and ``a.png``) keep their
extension in the output name (``a.jpg.png``). Files that cannot be read are reported with
the reason and skipped; the rest of the batch goes on. Every file is written atomically.

Example:
    >>> result = predict("best.keras", ["photos/", "extra/*.jpg"], "out", overlay=True)
    ...  # doctest: +SKIP
    >>> len(result.written), result.failed  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from segbalance.artifacts import load_model
from segbalance.errors import Problem, UserError
from segbalance.io import atomic_path
from segbalance.metrics import logit_threshold
from segbalance.pipeline.decode import load_image, preprocess_for_model

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TINT = np.array([0, 220, 255], np.float32)  # cyan: distinct from skin and common polish
CONTOUR = np.array([255, 230, 0], np.uint8)  # yellow
TINT_ALPHA = 0.45
OUTPUT_DIRS = ("masks", "overlays", "probabilities")


@dataclass
class PredictResult:
    """What ``predict`` did: one entry per written input, one problem per skipped one."""

    written: list[dict[str, str]] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # earlier outputs found under OUT


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _walk(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if _is_image(Path(f))]
    return found


def expand_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """Files from files, folders and globs (deduplicated, in order) and the inputs that gave none.

    Example:
        >>> files, problems = expand_inputs(["photos", "more/*.png", "one.jpg"])  # doctest: +SKIP
    """
    files: list[Path] = []
    problems: list[Problem] = []
    for item in inputs:
        path = Path(item)
        what = ""
        if path.is_dir():
            found = _walk(path)
            what = "folder holds no image files (" + ", ".join(IMAGE_EXTENSIONS) + ")"
        elif path.is_file():
            found = [path]
        elif glob.has_magic(str(item)):
            found = []
            for hit in sorted(glob.glob(str(item), recursive=True)):
                hit_path = Path(hit)
                if hit_path.is_dir():
                    found += _walk(hit_path)
                elif _is_image(hit_path):
                    found.append(hit_path)
            what = "pattern matches no image file"
        else:
            problems.append(Problem(str(item), "no such file or folder", "check the path"))
            continue
        if not found:
            problems.append(Problem(str(item), what, "pass images, folders of images or globs"))
        files += found
    seen: set[str] = set()
    unique = []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def output_names(files: Sequence[Path]) -> list[Path]:
    """Relative output paths (``.png``) mirroring ``files`` below their common folder."""
    if not files:
        return []
    absolute = [Path(os.path.abspath(f)) for f in files]
    base = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    rel = [p.relative_to(base) for p in absolute]
    stems = Counter(r.with_suffix("") for r in rel)
    return [
        r.with_suffix(".png") if stems[r.with_suffix("")] == 1 else r.with_name(r.name + ".png")
        for r in rel
    ]


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
        return full > self.cut, 1.0 / (1.0 + np.exp(-full))


def _read(path: Path) -> np.ndarray | Problem:
    try:
        return load_image(path)
    except (UserError, OSError) as err:
        return Problem(str(path), str(err).split("\n")[0], "check the file or remove it")


def predict(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    overlay: bool = False,
    probabilities: bool = False,
    threshold: float | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> PredictResult:
    """Write masks (and optionally overlays/probabilities) for every input image.

    Args:
        model_path: a ``.keras`` file written by ``segbalance train``.
        inputs: files, folders (recursive) or glob patterns.
        out: output folder (created).
        overlay: also write the image with the mask tinted and outlined.
        probabilities: also write 8-bit probability maps.
        threshold: probability threshold; default the model's.
        batch_size: images per forward pass.
        progress: show a progress bar on stderr.

    Raises:
        UserError: no input gave any file, or bad arguments.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    files, problems = expand_inputs(inputs)
    # Outputs of an earlier run inside an input folder are not new inputs.
    inside = tuple(os.path.realpath(Path(out) / d) + os.sep for d in OUTPUT_DIRS)
    ignored = [str(f) for f in files if os.path.realpath(f).startswith(inside)]
    files = [f for f in files if not os.path.realpath(f).startswith(inside)]
    if not files:
        detail = "; ".join(f"{p.file}: {p.problem}" for p in problems)
        raise UserError(f"no input images found ({detail})")
    model, meta = load_model(model_path)
    t = float(meta.threshold if threshold is None else threshold)
    predictor = _Predictor(model, (int(meta.image_size[0]), int(meta.image_size[1])), t)
    result = PredictResult(failed=problems, ignored=ignored)
    names = output_names(files)
    out = Path(out)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        stop = start + batch_size
        chunk = list(zip(files[start:stop], names[start:stop], strict=True))
        loaded = [(f, n, _read(f)) for f, n in chunk]
        good = [(f, n, im) for f, n, im in loaded if isinstance(im, np.ndarray)]
        result.failed += [im for _, _, im in loaded if isinstance(im, Problem)]
        if good:
            logits = predictor.logits([im for _, _, im in good])
            for (f, name, image), lg in zip(good, logits, strict=True):
                result.written.append(
                    _write_outputs(predictor, f, out, name, image, lg, overlay, probabilities)
                )
        bar.update(len(chunk))
    bar.close()
    return result


def _write_outputs(
    predictor: _Predictor,
    source: Path,
    out: Path,
    name: Path,
    image: np.ndarray,
    logits: np.ndarray,
    overlay: bool,
    probabilities: bool,
) -> dict[str, str]:
    mask, prob = predictor.outputs(image, logits)
    written = {"input": str(source)}
    targets = [("mask", out / "masks" / name, lambda: mask.astype(np.uint8) * 255)]
    if overlay:
        targets.append(("overlay", out / "overlays" / name, lambda: overlay_image(image, mask)))
    if probabilities:
        targets.append(
            ("probabilities", out / "probabilities" / name, lambda: np.round(prob * 255))
        )
    for key, path, make in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(np.asarray(make()).astype(np.uint8), path)
        written[key] = str(path)
    return written
