"""Segmentation models: U-Nets on keras.applications encoders and ``unet-small``.

Importing this package registers the custom layers so saved ``.keras`` files load with
``keras.saving.load_model(path, safe_mode=True)``.
"""

from segbalance.models.encoders import (
    ENCODER_NAME,
    ENCODERS,
    CaffePreprocess,
    EncoderSpec,
    build_encoder,
    get_encoder,
)
from segbalance.models.unet import build_model, model_names, set_encoder_trainable

__all__ = [
    "ENCODERS",
    "ENCODER_NAME",
    "CaffePreprocess",
    "EncoderSpec",
    "build_encoder",
    "build_model",
    "get_encoder",
    "model_names",
    "set_encoder_trainable",
]
