"""Models: contract (input/output names, float32 logits), safe_mode loading, encoders."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from segbalance.config import ModelConfig
from segbalance.errors import UserError
from segbalance.models import (
    ENCODERS,
    CaffePreprocess,
    EncoderSpec,
    build_model,
    get_encoder,
    model_names,
    set_encoder_trainable,
)

SIZE = (64, 64)
# Narrow decoder: the tests check wiring, not capacity, and it keeps builds fast.
NARROW = (32, 16, 16, 8, 8)


@pytest.fixture(autouse=True)
def _fresh_session():
    keras.backend.clear_session()
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()


def cfg(name: str = "unet-small", **kw) -> ModelConfig:
    kw.setdefault("encoder_weights", "none")
    kw.setdefault("decoder_filters", NARROW)
    return ModelConfig(name=name, **kw)


def is_f32(tensor) -> bool:
    return keras.backend.standardize_dtype(tensor.dtype) == "float32"


def images(n: int = 1) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, *SIZE, 3)).astype(np.float32)


def test_unet_small_contract():
    model = build_model(cfg(), SIZE)
    assert model.get_layer("image").output is model.input
    assert tuple(model.input.shape) == (None, 64, 64, 3)
    assert model.layers[-1].name == "logits"
    out = model(images(2), training=False)
    assert tuple(out.shape) == (2, 64, 64, 1) and is_f32(out)
    # 0..255 in: the model rescales by itself (first layer after the input)
    assert model.get_layer("normalize").scale == pytest.approx(1 / 255)


def test_unet_small_default_size_and_classes():
    model = build_model(ModelConfig(name="unet-small", encoder_weights="none", classes=3), SIZE)
    assert tuple(model.output.shape) == (None, 64, 64, 3)
    # default widths 16-32-64-128-256: about 1.9 M parameters, sized for CPUs
    assert 1.5e6 < model.count_params() < 2.5e6


def test_batch_norm_switch_and_seeded_initialisation():
    plain = build_model(cfg(batch_norm=False), SIZE)
    kinds = {type(layer).__name__ for layer in plain.layers}
    assert "BatchNormalization" not in kinds and plain.get_layer("dec0_conv1").use_bias
    with_bn = build_model(cfg(), SIZE)
    assert isinstance(with_bn.get_layer("dec0_bn1"), keras.layers.BatchNormalization)

    # one seed fixes the initialisation
    keras.utils.set_random_seed(3)
    first = [w.copy() for w in build_model(cfg(), SIZE).get_weights()]
    keras.backend.clear_session()
    keras.utils.set_random_seed(3)
    second = build_model(cfg(), SIZE).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    keras.utils.set_random_seed(4)
    third = build_model(cfg(), SIZE).get_weights()
    assert not np.array_equal(first[0], third[0])


def test_saved_model_loads_with_safe_mode(tmp_path):
    model = build_model(cfg(dropout=0.1), SIZE)
    x = images(2)
    expected = model(x, training=False)
    path = tmp_path / "m.keras"
    model.save(path)
    keras.backend.clear_session()
    # custom objects come from package registration only (no custom_objects argument)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded(x, training=False), expected, rtol=1e-5, atol=1e-5)


def test_caffe_preprocess_by_hand_and_safe_mode(tmp_path):
    inputs = keras.Input((1, 1, 3))
    model = keras.Model(inputs, CaffePreprocess(name="normalize")(inputs))
    rgb = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    # BGR = (30, 20, 10) minus the ImageNet BGR means
    expected = [[[[30 - 103.939, 20 - 116.779, 10 - 123.68]]]]
    np.testing.assert_allclose(model(rgb), expected, rtol=1e-5)
    model.save(tmp_path / "c.keras")
    loaded = keras.saving.load_model(tmp_path / "c.keras", safe_mode=True)
    np.testing.assert_allclose(loaded(rgb), expected, rtol=1e-5)


def test_mixed_precision_output_is_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_model(cfg(), SIZE)
    assert model.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    out = model(images(1), training=False)
    assert is_f32(out)
    assert np.isfinite(np.asarray(out)).all()


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match="did you mean 'efficientnetb4'") as info:
        build_model(cfg("efficientnet-b4"), SIZE)
    for name in ("unet-small", "resnet50", "convnext_tiny", "mobilenetv3small"):
        assert name in str(info.value)
    with pytest.raises(UserError, match="unknown encoder"):
        get_encoder("vgg16")


def test_bad_model_settings_are_user_errors():
    # Settings fail when the config is made (load_config turns these into UserErrors).
    with pytest.raises(ValidationError, match="decoder_filters"):
        cfg(decoder_filters=(64, 32))
    with pytest.raises(ValidationError, match="dropout"):
        cfg(dropout=1.0)
    with pytest.raises(UserError, match="multiples of 32"):
        build_model(cfg(), (48, 64))
    with pytest.raises(UserError, match="neither 'imagenet'"):
        build_model(cfg("mobilenetv3small", encoder_weights="/nope/w.weights.h5"), SIZE)


def test_registry_covers_the_issue_and_tutorial_skips():
    expected = {f"efficientnetb{i}" for i in range(8)}
    expected |= {"resnet50", "mobilenetv2", "mobilenetv3small", "mobilenetv3large"}
    expected |= {"convnext_tiny"}
    assert set(ENCODERS) == expected
    assert set(model_names()) == expected | {"unet-small"}
    assert get_encoder("efficientnetb4").skips == (
        "block2a_expand_activation",
        "block3a_expand_activation",
        "block4a_expand_activation",
        "block6a_expand_activation",
    )


def test_unet_small_weights_file_and_imagenet_warning(tmp_path):
    source = build_model(cfg(), SIZE)
    path = tmp_path / "small.weights.h5"
    source.save_weights(path)
    expected = source(images(), training=False)
    keras.backend.clear_session()
    loaded = build_model(cfg(encoder_weights=str(path)), SIZE)
    np.testing.assert_allclose(loaded(images(), training=False), expected, rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="imagenet"):
        build_model(cfg(encoder_weights="imagenet"), SIZE)


def test_encoder_weights_file_safe_mode_and_freezing(tmp_path):
    # mobilenetv3small: the cheapest backbone to build.
    first = build_model(cfg("mobilenetv3small"), SIZE)
    encoder = first.get_layer("encoder")
    path = tmp_path / "enc.weights.h5"
    encoder.save_weights(path)
    expected = [w.copy() for w in encoder.get_weights()]
    keras.backend.clear_session()

    model = build_model(cfg("mobilenetv3small", encoder_weights=str(path)), SIZE)
    encoder = model.get_layer("encoder")
    got = encoder.get_weights()
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)

    # the nested "encoder" sub-model survives a .keras round trip under safe_mode
    x = images()
    expected_out = model(x, training=False)
    model.save(tmp_path / "enc.keras")
    loaded = keras.saving.load_model(tmp_path / "enc.keras", safe_mode=True)
    assert isinstance(loaded.get_layer("encoder"), keras.Model)
    np.testing.assert_allclose(loaded(x, training=False), expected_out, rtol=1e-4, atol=1e-5)

    # the legacy .h5 layout of the keras.applications "*_notop.h5" downloads loads too
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    legacy = tmp_path / "mobilenet_v3_small_notop.h5"
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, encoder)
    keras.backend.clear_session()
    again = build_model(cfg("mobilenetv3small", encoder_weights=str(legacy)), SIZE)
    for a, b in zip(again.get_layer("encoder").get_weights(), expected, strict=True):
        np.testing.assert_array_equal(a, b)

    n_all, n_encoder = len(model.trainable_weights), len(encoder.trainable_weights)
    assert set_encoder_trainable(model, False)
    assert len(model.trainable_weights) == n_all - n_encoder > 0
    assert set_encoder_trainable(model, True) and len(model.trainable_weights) == n_all


def test_unet_small_has_no_encoder_to_freeze():
    assert not set_encoder_trainable(build_model(cfg(), SIZE), False)


def test_weights_of_another_network_are_a_user_error(tmp_path):
    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(UserError, match="cannot load encoder weights"):
        build_model(cfg("mobilenetv3small", encoder_weights=str(path)), SIZE)


def test_imagenet_download_failure_is_a_user_error(monkeypatch):
    # No network in tests: stand in for keras' download failing, check the wrapping only.
    def offline(**kwargs):
        assert kwargs["weights"] == "imagenet" and kwargs["include_top"] is False
        raise Exception("URL fetch failure on https://storage.googleapis.com/...")

    monkeypatch.setitem(ENCODERS, "efficientnetb4", EncoderSpec(offline, ()))
    with pytest.raises(UserError, match="imagenet weights of efficientnetb4.*'none'"):
        build_model(cfg("efficientnetb4", encoder_weights="imagenet"), SIZE)


def _check_normalisation(name: str, model: keras.Model) -> None:
    """0..255 in: each encoder brings pixels to its backbone's range inside the model."""
    if name == "resnet50":
        assert isinstance(model.get_layer("normalize"), CaffePreprocess)
    elif name == "mobilenetv2":
        out = model.get_layer("normalize")(np.array([0.0, 127.5, 255.0], np.float32))
        np.testing.assert_allclose(np.asarray(out), [-1, 0, 1], atol=1e-6)
    else:  # EfficientNet, MobileNetV3, ConvNeXt normalise inside keras.applications
        kinds = {type(layer).__name__ for layer in model.get_layer("encoder").layers[:4]}
        assert kinds & {"Rescaling", "Normalization"}, kinds


# Expected encoder feature strides: ConvNeXt starts at stride 4 (4x4 patchify stem).
def _strides(name: str) -> list[int]:
    return [4, 8, 16, 32] if name == "convnext_tiny" else [2, 4, 8, 16, 32]


@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_builds_at_64px(name):
    model = build_model(cfg(name), SIZE)
    encoder = model.get_layer("encoder")
    assert isinstance(encoder, keras.Model)
    assert [64 // int(o.shape[1]) for o in encoder.outputs] == _strides(name)
    _check_normalisation(name, model)
    out = model(images(1), training=False)
    assert tuple(out.shape) == (1, 64, 64, 1) and is_f32(out)
