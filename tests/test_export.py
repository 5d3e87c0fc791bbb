"""segbalance export: the SavedModel (and TFLite) give the Keras model's masks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from segbalance.cli import main
from segbalance.config import ModelConfig
from segbalance.errors import UserError
from segbalance.io import mark_dir


@pytest.fixture(scope="module")
def model_file(make_model_file) -> Path:
    """A model whose own threshold (0.4) is not the default: exports must carry it."""
    return make_model_file(["0"], threshold=0.4, seed=3)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)


def keras_outputs(model_file: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from segbalance.artifacts import load_model

    model, _ = load_model(model_file)
    logits = np.asarray(model(images.astype(np.float32), training=False), np.float64)
    return 1.0 / (1.0 + np.exp(-logits)), logits > np.log(0.4 / 0.6)


def test_savedmodel_gives_the_keras_masks(model_file, batch, tmp_path) -> None:
    import tensorflow as tf

    out = tmp_path / "serving" / "1"
    assert main(["export", str(model_file), "--format", "savedmodel", "--out", str(out)]) == 0
    probs, masks = keras_outputs(model_file, batch)
    assert 0.05 < masks.mean() < 0.95  # both classes present: the comparison means something
    loaded = tf.saved_model.load(str(out))
    for key, images in (("serving_default", batch.astype(np.float32)), ("serve_uint8", batch)):
        result = loaded.signatures[key](images=tf.constant(images))
        assert result["mask"].dtype == tf.uint8
        np.testing.assert_array_equal(result["mask"].numpy().astype(bool), masks)
        np.testing.assert_allclose(result["probabilities"].numpy(), probs, atol=1e-5)
    meta = json.loads((out / "segbalance.json").read_text())
    assert meta["image_size"] == [64, 64] and meta["threshold"] == 0.4
    assert [p.name for p in out.parent.iterdir()] == ["1"]  # no temp folders left
    # an existing export is kept unless --overwrite (refused before any work is done)
    assert main(["export", str(model_file), "--format", "savedmodel", "--out", str(out)]) == 2
    assert loaded.signatures["serving_default"] is not None


def test_replacing_a_folder_keeps_the_old_one_until_the_new_one_is_in_place(tmp_path) -> None:
    from segbalance.io import replace_dir

    out, new = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]


@pytest.mark.heavy
def test_tflite_gives_the_keras_masks(model_file, batch, tmp_path) -> None:
    import tensorflow as tf

    out = tmp_path / "m.tflite"
    assert main(["export", str(model_file), "--format", "tflite", "--out", str(out)]) == 0
    probs, masks = keras_outputs(model_file, batch)
    interpreter = tf.lite.Interpreter(model_path=str(out))
    runner = interpreter.get_signature_runner("serve")
    result = runner(images=batch[:1].astype(np.float32))
    agree = (result["mask"].astype(bool) == masks[:1]).mean()
    assert agree > 0.999  # TFLite kernels round differently near the threshold
    np.testing.assert_allclose(result["probabilities"], probs[:1], atol=1e-3)


def test_mixed_precision_model_is_exported_in_float32(tmp_path) -> None:
    import keras

    from segbalance.export import float32_model
    from segbalance.models import build_model

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(ModelConfig(name="unet-small", encoder_weights="none"), (32, 32))
    finally:
        keras.config.set_dtype_policy("float32")
    assert any(la.dtype_policy.compute_dtype == "bfloat16" for la in model._flatten_layers())
    clone = float32_model(model)
    assert all(la.dtype_policy.compute_dtype == "float32" for la in clone._flatten_layers())
    x = np.random.default_rng(1).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    a = np.asarray(model(x, training=False), np.float32)
    b = np.asarray(clone(x, training=False), np.float32)
    np.testing.assert_allclose(a, b, atol=0.1 * (np.abs(b).max() + 1e-3))


def test_bad_format_and_missing_onnx(model_file, tmp_path, monkeypatch) -> None:
    from segbalance.export import export_model

    with pytest.raises(UserError, match="unknown export format"):
        export_model(model_file, "coreml", tmp_path / "x")
    with pytest.raises(UserError, match=r"\.tflite"):
        export_model(model_file, "tflite", tmp_path / "x.bin")
    # The test extras install tf2onnx; a user's machine may not have it.
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx -> ImportError
    with pytest.raises(UserError, match="pip install tf2onnx"):
        export_model(model_file, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("fmt", "name", "message"),
    [
        ("savedmodel", "mine", "segbalance did not create it"),
        ("tflite", "mine.tflite", "is a folder"),
        ("savedmodel", "run", "it is a segbalance run folder, not an export"),
    ],
)
def test_overwrite_never_replaces_a_users_folder(
    fmt: str, name: str, message: str, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    if name == "run":  # a training work dir: segbalance's, but not an export to replace
        mark_dir(folder, "run")
    argv = ["export", str(tmp_path / "m.keras"), "--format", fmt, "--out", str(folder)]
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(folder) in err and "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir() if p.name != ".segbalance") == ["notes.txt"]
