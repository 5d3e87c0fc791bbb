"""Export a trained model for serving: SavedModel (TF Serving), TFLite, ONNX.

Every format wraps the network in the same serving function: images of the training size,
float32 in 0..255 (or uint8 for the SavedModel's ``serve_uint8`` endpoint), in; a dict out:

* ``probabilities``: float32 [B, H, W, 1], sigmoid of the logits;
* ``mask``: uint8 [B, H, W, 1] in {0, 1}, ``sigmoid(logit) > threshold`` (the model's).

A multiclass model (K classes in its file) gives instead:

* ``probabilities``: float32 [B, H, W, K], the softmax over the classes (file order);
* ``mask``: uint8 [B, H, W, 1], the label map: the classes file's value of the most
  probable class (argmax; no threshold).

Resizing to and from the training size is left to the caller (``segbalance predict`` does
it for files). A model trained under mixed precision is rebuilt in float32 first, so the
exported graph runs on any CPU and converts to TFLite. The SavedModel folder also holds
``segbalance.json`` (image size, groups, threshold, config). Outputs are written to a temp
name and renamed: a failed export leaves nothing half-written.

Example:
    >>> export_model("runs/exp/best.keras", "savedmodel", "serving/nails/1")  # doctest: +SKIP
    >>> import tensorflow as tf  # doctest: +SKIP
    >>> tf.saved_model.load("serving/nails/1").signatures["serving_default"]  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from segbalance.artifacts import META_MEMBER, ModelMeta, load_model, read_meta, refuse_threshold
from segbalance.classes import ClassSet
from segbalance.errors import UserError, unknown_name_error
from segbalance.io import (
    atomic_dir,
    atomic_path,
    atomic_write,
    check_output_path,
    check_replaceable,
    mark_dir,
)
from segbalance.metrics import logit_threshold

FORMATS = ("savedmodel", "tflite", "onnx")
SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}

#: The kind in the .segbalance marker of a SavedModel folder export writes.
EXPORT_KIND = "export"


def _float32_config(node: Any) -> Any:
    """The model config with every dtype policy replaced by float32."""
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy" and isinstance(node.get("config"), dict):
            return {**node, "config": {**node["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_float32_config(v) for v in node]
    if node in ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16"):
        return "float32"
    return node


def float32_model(model: Any) -> Any:
    """The model itself if it computes in float32, else a float32 rebuild with its weights."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model._flatten_layers()):
        return model
    clone = keras.Model.from_config(_float32_config(model.get_config()))
    clone.set_weights(model.get_weights())
    return clone


def serving_function(
    model: Any, threshold: float, classes: ClassSet | None = None
) -> Callable[[Any], dict[str, Any]]:
    """``images f32[B,H,W,3] 0..255 -> {"probabilities", "mask"}`` around ``model``.

    ``classes``: a multiclass model's; softmax probabilities and the argmax's class values.
    """
    cut = logit_threshold(threshold)
    if classes is not None:
        values = list(classes.values)

        def serve_classes(images: Any) -> dict[str, Any]:
            logits = tf.cast(model(tf.cast(images, tf.float32), training=False), tf.float32)
            best = tf.argmax(logits, axis=-1, output_type=tf.int32)
            # a constant of the graph (not a captured tensor, which ONNX would make an input)
            table = tf.constant(values, tf.uint8)
            return {
                "probabilities": tf.nn.softmax(logits, axis=-1),
                "mask": tf.gather(table, best)[..., None],
            }

        return serve_classes

    def serve(images: Any) -> dict[str, Any]:
        logits = tf.cast(model(tf.cast(images, tf.float32), training=False), tf.float32)
        return {
            "probabilities": tf.sigmoid(logits),
            "mask": tf.cast(logits > cut, tf.uint8),
        }

    return serve


def _specs(meta: ModelMeta) -> tuple[Any, Any]:
    h, w = (int(v) for v in meta.image_size)
    return (
        tf.TensorSpec([None, h, w, 3], tf.float32, name="images"),
        tf.TensorSpec([None, h, w, 3], tf.uint8, name="images"),
    )


def write_savedmodel(model: Any, meta: ModelMeta, path: Path, threshold: float) -> None:
    """Write a SavedModel with ``serve`` (= ``serving_default``, float) and ``serve_uint8``."""
    serve = serving_function(model, threshold, meta.class_set)
    float_spec, uint8_spec = _specs(meta)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[float_spec])
    archive.add_endpoint("serve_uint8", serve, input_signature=[uint8_spec])
    archive.write_out(str(path), verbose=False)
    (path / META_MEMBER).write_text(meta.to_json())


def tflite_bytes(model: Any, meta: ModelMeta, threshold: float) -> bytes:
    """A TFLite flatbuffer of the float serving function (builtin ops only)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_savedmodel(model, meta, Path(tmp) / "sm", threshold)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(Path(tmp) / "sm"), signature_keys=["serve"]
        )
        return bytes(converter.convert())


def _patch_tf2onnx_for_numpy2() -> None:
    """Apply Keras' numpy-2 shim to tf2onnx, if this Keras still ships it.

    tf2onnx predates numpy 2 (``np.object``, constant folding); Keras patches it the same way
    before its own ONNX export. The shim is only in the private ``keras.src`` tree (no public
    name exposes it), so this is the package's one ``keras.src`` import, kept here alone and
    optional: without it ONNX export runs unpatched, as on a numpy 1 install.
    """
    # Lazy: the shim imports onnx, an optional dependency; ImportError means "go unpatched".
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        patch_tf2onnx()
    except ImportError:
        pass


def write_onnx(model: Any, meta: ModelMeta, path: Path, threshold: float) -> None:
    """ONNX through tf2onnx (an optional dependency)."""
    try:  # lazy: tf2onnx is optional, needed only here; without it the other formats work
        import tf2onnx
    except ImportError as err:
        raise UserError(
            "ONNX export needs the tf2onnx package: pip install tf2onnx "
            "(then run the same command again); SavedModel and TFLite need nothing extra"
        ) from err
    _patch_tf2onnx_for_numpy2()
    float_spec, _ = _specs(meta)
    serve = serving_function(model, threshold, meta.class_set)
    fn = tf.function(serve, input_signature=[float_spec])
    tf2onnx.convert.from_function(fn, input_signature=[float_spec], output_path=str(path))


def _check_out(fmt: str, out: Path, overwrite: bool) -> None:
    """Refuse a bad ``out`` before any work, giving the real reason before any advice.

    A folder that ``--overwrite`` would refuse anyway (a user's, or a training run) is
    named as such first, so the user is never sent round to pass ``--overwrite`` in vain.
    """
    if fmt in SUFFIX and out.suffix.lower() != SUFFIX[fmt]:
        raise UserError(f"--out {out} must end in {SUFFIX[fmt]} for --format {fmt}")
    if fmt == "savedmodel" and out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; a SavedModel is a folder")
    if fmt != "savedmodel" and out.is_dir():
        raise UserError(f"--out {out} is a folder; --format {fmt} writes one file: name it")
    if fmt == "savedmodel":
        # never a user's folder (nor a training run), even with --overwrite
        check_replaceable(out, "--out", EXPORT_KIND)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite or choose another --out")
    check_output_path(out, "--out", folder=fmt == "savedmodel")


def export_model(
    model_path: str | Path,
    fmt: str,
    out: str | Path,
    *,
    threshold: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Export ``model_path`` as ``fmt`` to ``out``.

    Args:
        model_path: a ``.keras`` file written by ``segbalance train``.
        fmt: ``savedmodel`` (a folder), ``tflite`` (a ``.tflite`` file) or ``onnx``.
        out: where to write.
        threshold: mask threshold baked into the export; default the model's (binary
            models only: a multiclass mask is the most probable class).
        overwrite: replace an existing ``out``.

    Raises:
        UserError: unknown format, bad ``out``, a threshold for a multiclass model, or
            tf2onnx missing for ONNX.
    """
    if fmt not in FORMATS:
        raise unknown_name_error("export format", fmt, FORMATS)
    out = Path(out)
    _check_out(fmt, out, overwrite)
    if threshold is not None:
        refuse_threshold(read_meta(model_path), threshold, model_path)
    keras_model, meta = load_model(model_path)
    model = float32_model(keras_model)
    t = float(meta.threshold if threshold is None else threshold)
    if fmt == "savedmodel":
        with atomic_dir(out) as tmp:
            write_savedmodel(model, meta, tmp, t)
            mark_dir(tmp, EXPORT_KIND)
    elif fmt == "tflite":
        with atomic_write(out, "wb") as fh:
            fh.write(tflite_bytes(model, meta, t))
    else:
        with atomic_path(out) as tmp:
            write_onnx(model, meta, tmp, t)
    return out
