"""Multiclass predict and export: class values, colours, legends, per-class probabilities.

The model is a random 3-class unet-small at 32 px (no training), its head scaled up so
each class wins somewhere; its classes use values 0/100/200, so a mask holding indices
instead of values would fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbalance.classes import ClassSet
from segbalance.cli import main
from segbalance.errors import UserError

SIZE = 32
SPEC = ClassSet.model_validate(
    {
        "classes": [
            {"name": "background", "value": 0},
            {"name": "nail", "value": 100, "color": [255, 0, 0]},
            {"name": "skin", "value": 200, "color": [0, 255, 0]},
        ],
        "ignore": 255,
    }
)
VALUES = np.array(SPEC.values, np.uint8)


@pytest.fixture(scope="module")
def mc_model(tmp_path_factory) -> Path:
    import keras

    from segbalance.artifacts import ModelMeta, save_model
    from segbalance.config import ModelConfig
    from segbalance.models import build_model

    keras.utils.set_random_seed(4)
    cfg = ModelConfig(name="unet-small", classes=3, decoder_filters=(32, 16, 8, 8, 8))
    model = build_model(cfg, (SIZE, SIZE))
    head = model.get_layer("logits")
    kernel, *rest = head.get_weights()
    head.set_weights([kernel * 50.0, *rest])
    meta = ModelMeta(image_size=(SIZE, SIZE), groups=["0"], classes=SPEC.to_json())
    return save_model(model, tmp_path_factory.mktemp("mc_model") / "m.keras", meta)


def keras_logits(model_file: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """Each image's logits resized back to its own size, as predict does (f32 [h, w, K])."""
    import tensorflow as tf

    from segbalance.artifacts import load_model
    from segbalance.pipeline.decode import preprocess_for_model

    model, _ = load_model(model_file)
    out = []
    for image in images:
        logits = model(preprocess_for_model(image, (SIZE, SIZE))[None], training=False)
        out.append(np.asarray(tf.image.resize(logits, image.shape[:2], method="bilinear"))[0])
    return out


def _photo(path: Path, hw: tuple[int, int], seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def test_predict_writes_values_colours_overlays_and_class_maps(mc_model, tmp_path, capsys) -> None:
    photos = {"a.png": _photo(tmp_path / "in" / "a.png", (40, 56), 0)}
    photos["b.png"] = _photo(tmp_path / "in" / "b.png", (SIZE, SIZE), 1)
    out = tmp_path / "out"
    argv = ["predict", str(mc_model), str(tmp_path / "in"), "--out", str(out), "--quiet"]
    assert main([*argv, "--colors", "--overlay", "--probabilities"]) == 0
    assert "(masks, colors, overlays, probabilities)" in capsys.readouterr().out
    seen = set()
    for (name, image), logits in zip(
        photos.items(), keras_logits(mc_model, [*photos.values()]), strict=True
    ):
        h, w = image.shape[:2]
        labels = logits.argmax(axis=-1)
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, VALUES[labels])  # the classes file's values
        seen |= set(np.unique(mask).tolist())
        colours = np.asarray(Image.open(out / "colors" / f"{name}.png"))
        np.testing.assert_array_equal(colours, SPEC.palette()[labels])
        maps = [
            np.asarray(Image.open(out / "probabilities" / c / f"{name}.png")) for c in SPEC.names
        ]
        total = np.sum(maps, axis=0, dtype=np.int64)
        assert np.abs(total - 255).max() <= 2  # softmax x 255, rounded per class
        assert (np.argmax(maps, axis=0) == labels).mean() > 0.97  # 8-bit ties aside
        overlay = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        assert overlay.shape[0] > h and overlay.shape[1] >= w  # the legend strip below
        background = labels == 0
        np.testing.assert_array_equal(overlay[:h, :w][background], image[background])
        assert (overlay[:h, :w][~background] != image[~background]).any()
    assert seen == {0, 100, 200}  # every class predicted somewhere: the checks mean something


def test_legend_names_each_class_in_its_colour() -> None:
    from segbalance.overlays import class_overlay

    image = np.full((20, 30, 3), 90, np.uint8)
    labels = np.zeros((20, 30), np.uint8)
    labels[2:10, 2:10], labels[12:18, 12:28] = 1, 2
    out = class_overlay(image, labels, SPEC)
    assert (out[0, 0] == 90).all()  # background untouched
    assert (out[2, 2] == [255, 0, 0]).all() and (out[12, 12] == [0, 255, 0]).all()  # contours
    inner = out[5, 5]
    assert not (inner == 90).all() and not (inner == [255, 0, 0]).all()  # tinted
    strip = out[20:].reshape(-1, 3)
    for rgb in ([255, 0, 0], [0, 255, 0]):  # one swatch per foreground class
        assert (strip == rgb).all(axis=1).sum() > 10


def test_predict_refuses_flags_that_do_not_fit(mc_model, model_file, tmp_path, capsys) -> None:
    src = tmp_path / "in" / "a.png"
    _photo(src, (SIZE, SIZE), 2)
    out = tmp_path / "out"
    cases = [
        ([str(mc_model), "--threshold", "0.4"], "no threshold"),
        ([str(model_file), "--colors"], "--colors is for multiclass models"),
    ]
    for (model, *flags), says in cases:
        assert main(["predict", model, str(src), "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
        assert not out.exists()  # refused before anything is written


def test_savedmodel_gives_class_probabilities_and_the_label_map(mc_model, tmp_path, capsys):
    import tensorflow as tf

    out = tmp_path / "serving" / "1"
    assert main(["export", str(mc_model), "--format", "savedmodel", "--out", str(out)]) == 0
    assert "probabilities [batch, H, W, 3]" in capsys.readouterr().out
    batch = np.random.default_rng(5).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
    logits = np.stack(keras_logits(mc_model, list(batch))).astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    loaded = tf.saved_model.load(str(out))
    for key, images in (("serving_default", batch.astype(np.float32)), ("serve_uint8", batch)):
        result = loaded.signatures[key](images=tf.constant(images))
        assert result["mask"].dtype == tf.uint8 and result["mask"].shape == (2, SIZE, SIZE, 1)
        np.testing.assert_array_equal(result["mask"].numpy()[..., 0], VALUES[logits.argmax(-1)])
        np.testing.assert_allclose(result["probabilities"].numpy(), probs, atol=1e-5)


def test_tflite_gives_the_keras_classes(mc_model, tmp_path) -> None:
    import tensorflow as tf

    out = tmp_path / "m.tflite"
    assert main(["export", str(mc_model), "--format", "tflite", "--out", str(out)]) == 0
    image = np.random.default_rng(6).integers(0, 256, (1, SIZE, SIZE, 3)).astype(np.float32)
    logits = keras_logits(mc_model, [image[0]])[0][None]
    runner = tf.lite.Interpreter(model_path=str(out)).get_signature_runner("serve")
    result = runner(images=image)
    assert result["mask"].shape == (1, SIZE, SIZE, 1) and result["mask"].dtype == np.uint8
    agree = (result["mask"][..., 0] == VALUES[logits.argmax(-1)]).mean()
    assert agree > 0.999  # TFLite kernels round differently where two classes tie
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(
        result["probabilities"], probs / probs.sum(-1, keepdims=True), atol=1e-3
    )


def test_onnx_gives_the_keras_classes(mc_model, tmp_path) -> None:
    import onnxruntime as ort  # in the test extras (pyproject.toml)

    out = tmp_path / "m.onnx"
    assert main(["export", str(mc_model), "--format", "onnx", "--out", str(out)]) == 0
    image = np.random.default_rng(7).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    logits = np.stack(keras_logits(mc_model, list(image)))
    session = ort.InferenceSession(str(out))
    names = [o.name for o in session.get_outputs()]
    result = dict(zip(names, session.run(None, {"images": image}), strict=True))
    assert result["mask"].dtype == np.uint8
    assert (result["mask"][..., 0] == VALUES[logits.argmax(-1)]).mean() > 0.999
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(
        result["probabilities"], probs / probs.sum(-1, keepdims=True), atol=1e-4
    )


def test_export_refuses_a_threshold_for_a_multiclass_model(mc_model, tmp_path) -> None:
    from segbalance.export import export_model

    out = tmp_path / "sm"
    with pytest.raises(UserError, match="no threshold"):
        export_model(mc_model, "savedmodel", out, threshold=0.3)
    assert not out.exists() and list(tmp_path.iterdir()) == []
