"""Shared fixtures. Tests use tiny inputs (32-64 px, batch 2)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

# Quiet TensorFlow and keep tests on the CPU with deterministic ops.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def synth_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in synthetic data at 2% scale and 64 px, prepared: its manifest path."""
    # Imported here, not at the top, so that collecting a test file that needs no
    # TensorFlow does not pay for importing it.
    from segbalance.data.prepare import prepare_dataset
    from segbalance.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, scale=0.02, size=64, seed=0, progress=False, workers=1)
    return prepare_dataset(root, progress=False, workers=1).manifest_path


ModelFileMaker = Callable[..., Path]


@pytest.fixture(scope="session")
def make_model_file(tmp_path_factory: pytest.TempPathFactory) -> ModelFileMaker:
    """``make(groups, threshold=0.5, seed=1)``: a random unet-small at 64 px, saved with meta.

    No training: the head's kernel is scaled up so that the logits spread and a good share
    of pixels falls on each side of any threshold, which keeps mask comparisons meaningful.
    """
    import keras

    from segbalance.artifacts import ModelMeta, save_model
    from segbalance.config import ModelConfig
    from segbalance.models import build_model

    def make(groups: Sequence[str] = ("0",), threshold: float = 0.5, seed: int = 1) -> Path:
        keras.utils.set_random_seed(seed)
        model = build_model(ModelConfig(name="unet-small", encoder_weights="none"), (64, 64))
        head = model.layers[-1]
        kernel, *rest = head.get_weights()
        head.set_weights([kernel * 50.0, *rest])
        path = tmp_path_factory.mktemp("model") / "m.keras"
        meta = ModelMeta(image_size=(64, 64), groups=list(groups), threshold=threshold)
        return save_model(model, path, meta)

    return make


@pytest.fixture(scope="session")
def model_file(make_model_file: ModelFileMaker) -> Path:
    """The default model file: groups "0" and "1", threshold 0.5."""
    return make_model_file(["0", "1"], 0.5)
