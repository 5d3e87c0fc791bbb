"""Are a manifest's files still what prepare saw? Fast header checks, and decode failures named.

``prepare`` checked every pair, but files can be moved, deleted or damaged afterwards. A
training run finding that out mid-epoch would die in a TensorFlow traceback that names no
file, possibly after an hour and with no checkpoint. So ``train`` first opens every header
(no decode: a fraction of a second for thousands of files) and compares the size; and a
decode error at run time is traced back to the rows that fail to decode, with the same
decoder the pipeline uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from segbalance.data.manifest import Manifest
from segbalance.data.orientation import displayed_size
from segbalance.errors import InvalidDataError, Problem
from segbalance.pipeline.decode import decode_image, decode_mask

#: TensorFlow errors a damaged, missing or unsupported file raises inside the input pipeline.
DATA_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError)

FIX = "re-run 'segbalance prepare' on the data as it is now (or restore the file)"


def _header_problem(path: str, size: tuple[int, int]) -> str | None:
    """Why the file at ``path`` is not the (height, width) recorded, or None."""
    try:
        with Image.open(path) as im:
            width, height = displayed_size(im)  # the header only, EXIF orientation applied
    except FileNotFoundError:
        return "missing: moved or deleted after prepare"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"cannot be read any more ({type(err).__name__}: {err})"
    if (height, width) != size:
        return f"is {height}x{width} now, but prepare recorded {size[0]}x{size[1]}"
    return None


def check_files(manifest: Manifest, what: str) -> None:
    """Every image and mask of ``manifest`` opens and has its recorded size.

    Args:
        what: where the rows come from, for the message (e.g. the manifest path).

    Raises:
        InvalidDataError: one problem per changed file.
    """
    problems = []
    for i in range(len(manifest)):
        size = (int(manifest.height[i]), int(manifest.width[i]))
        for name in (manifest.image[i], manifest.mask[i]):
            reason = _header_problem(str(manifest.root / name), size)
            if reason is not None:
                problems.append(Problem(name, reason, FIX))
    if problems:
        raise InvalidDataError(
            problems, f"{len(problems)} file(s) of {what} changed since 'segbalance prepare'"
        )


def plain(err: tf.errors.OpError) -> str:
    """TensorFlow's decode message without its graph decoration ('{{function_node ...}}')."""
    text = str(err.message or type(err).__name__).strip().splitlines()[0]
    text = re.sub(r"\{\{[^}]*\}\}", "", text)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip() or type(err).__name__


def undecodable(manifest: Manifest, rows: Iterable[int]) -> list[Problem]:
    """The rows among ``rows`` whose image or mask the pipeline's decoder cannot read."""
    problems, seen = [], set()
    for i in rows:
        if i in seen:
            continue
        seen.add(i)
        try:
            decode_image(
                tf.constant(str(manifest.root / manifest.image[i])), int(manifest.orientation[i])
            )
            decode_mask(
                tf.constant(str(manifest.root / manifest.mask[i])),
                manifest.mask_rule[i],
                manifest.classes,
            )
        except DATA_ERRORS as err:
            pair = f"{manifest.image[i]} / {manifest.mask[i]}"
            problems.append(Problem(pair, f"damaged or truncated: {plain(err)}", FIX))
        except ValueError as err:  # a PIL reader (TIFF, label mask) called eagerly
            pair = f"{manifest.image[i]} / {manifest.mask[i]}"
            problems.append(Problem(pair, f"damaged or truncated: {err}", FIX))
    return problems


def pipeline_error(
    train: Manifest, train_rows: Iterable[int], valid: Manifest, epoch: int
) -> Exception:
    """A decode failure inside the pipeline of epoch ``epoch`` (from 0), traced to the rows
    that fail to decode (the train rows read that epoch and every valid row).

    Returns:
        InvalidDataError naming them, or a RuntimeError when every file decodes (a bug,
        not the data).
    """
    problems = undecodable(train, train_rows)
    problems += undecodable(valid, range(len(valid)))
    if not problems:  # not the data: let the original error through as a bug
        return RuntimeError(f"the input pipeline failed in epoch {epoch + 1}")
    return InvalidDataError(problems, "the pipeline cannot decode these files")
