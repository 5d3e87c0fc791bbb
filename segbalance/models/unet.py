"""U-Net decoder, the from-scratch ``unet-small`` and the ``build_model`` registry.

Every model is a functional ``keras.Model`` with input ``"image"`` (H, W, 3) float32 RGB in
0..255 and output layer ``"logits"`` (H, W, classes) computed in float32, so a
``mixed_float16``/``mixed_bfloat16`` policy never reaches the loss in low precision.
``classes == 1`` is binary segmentation (sigmoid of the logits); ``classes`` K >= 2 is
multiclass (softmax over the K logits; training sets K from the manifest's classes file).
Nothing downstream of the head assumes one channel, so a sigmoid per class (multilabel)
needs only another loss and metric.

Example:
    >>> from segbalance.config import ModelConfig
    >>> model = build_model(ModelConfig(name="unet-small"), (64, 64))
    >>> model.output.shape
    (None, 64, 64, 1)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
from keras import layers

from segbalance.config import ModelConfig
from segbalance.errors import UserError, unknown_name_error
from segbalance.models.encoders import ENCODER_NAME, ENCODERS, build_encoder, skip_strides

SMALL = "unet-small"


def conv_block(x: Any, filters: int, name: str, batch_norm: bool = True) -> Any:
    """Two 3x3 conv -> (BN) -> ReLU layers."""
    for i in (1, 2):
        x = layers.Conv2D(
            filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_conv{i}"
        )(x)
        if batch_norm:
            # momentum 0.9 (Keras default 0.99): the moving statistics must follow the
            # weights within a few hundred steps, or short runs validate with stale BN stats
            # and predict nothing (measured on the demo: IoU ~0 in inference mode).
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def decoder_block(
    x: Any, skip: Any | None, filters: int, name: str, batch_norm: bool = True
) -> Any:
    """Upsample x2 (nearest), concatenate the skip feature if any, then :func:`conv_block`."""
    x = layers.UpSampling2D(2, name=f"{name}_up")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return conv_block(x, filters, name, batch_norm)


def _head(x: Any, cfg: ModelConfig) -> Any:
    if cfg.dropout > 0:
        x = layers.Dropout(cfg.dropout, name="head_dropout")(x)
    # float32 here keeps the logits (and everything computed from them) out of fp16/bf16.
    return layers.Conv2D(cfg.classes, 3, padding="same", dtype="float32", name="logits")(x)


def _check(image_size: tuple[int, int]) -> None:
    # The other settings are checked by ModelConfig itself (bounds, 5 decoder stages).
    if image_size[0] % 32 or image_size[1] % 32:
        raise UserError(f"image size {image_size} must be multiples of 32 (U-Net depth 5)")


def build_unet_small(cfg: ModelConfig, image_size: tuple[int, int]) -> keras.Model:
    """A from-scratch U-Net of depth 4 sized for CPUs and tests.

    The encoder widths are ``reversed(decoder_filters)`` (default 16-32-64-128-256, about
    1.9 M parameters); the bottleneck sits at stride 16.
    """
    widths = list(reversed(cfg.decoder_filters))
    inputs = keras.Input((*image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="normalize")(inputs)
    skips = []
    for level, filters in enumerate(widths[:-1]):
        x = conv_block(x, filters, f"enc{level}", cfg.batch_norm)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = conv_block(x, widths[-1], "bottleneck", cfg.batch_norm)
    if cfg.dropout > 0:
        x = layers.Dropout(cfg.dropout, name="bottleneck_dropout")(x)
    pairs = zip(cfg.decoder_filters[1:], reversed(skips), strict=True)
    for stage, (filters, skip) in enumerate(pairs):
        x = decoder_block(x, skip, filters, f"dec{stage}", cfg.batch_norm)
    return keras.Model(inputs, _head(x, cfg), name="unet_small")


def encoder_weights(cfg: ModelConfig) -> str:
    """``model.encoder_weights`` with ``"default"`` resolved for the model it names."""
    if cfg.encoder_weights != "default":
        return cfg.encoder_weights
    return "none" if cfg.name == SMALL else "imagenet"


def build_unet(cfg: ModelConfig, image_size: tuple[int, int], weights: str) -> keras.Model:
    """U-Net on a keras.applications encoder (nested sub-model ``"encoder"``)."""
    encoder, normalize = build_encoder(cfg.name, image_size, weights)
    inputs = keras.Input((*image_size, 3), name="image")
    x = normalize(inputs) if normalize is not None else inputs
    features = encoder(x)
    *found, x = features
    it = iter(found)
    skips = [next(it) if present else None for present in skip_strides(cfg.name)]
    if cfg.dropout > 0:
        x = layers.Dropout(cfg.dropout, name="bottleneck_dropout")(x)
    # Stages go from stride 32 up: skips at 16, 8, 4, 2 then full resolution without one.
    for stage, filters in enumerate(cfg.decoder_filters):
        skip = skips[-1 - stage] if stage < len(skips) else None
        x = decoder_block(x, skip, filters, f"dec{stage}", cfg.batch_norm)
    return keras.Model(inputs, _head(x, cfg), name=f"unet_{cfg.name}")


def model_names() -> list[str]:
    """Every name ``build_model`` accepts."""
    return [SMALL, *ENCODERS]


def build_model(cfg: ModelConfig, image_size: Sequence[int]) -> keras.Model:
    """Build the model named by ``cfg.name`` for images of ``image_size`` (H, W).

    Args:
        cfg: model section of the config.
        image_size: (height, width), multiples of 32.

    Raises:
        UserError: unknown name (listing valid ones), bad decoder_filters, missing
            weights file.

    ``encoder_weights="default"`` is the model's own default: ImageNet for keras.applications
    encoders, none for ``unet-small``, which has no pretrained weights (an explicit
    ``"imagenet"`` is ignored for it with a warning); a file path is loaded into the whole
    model.
    """
    size = (int(image_size[0]), int(image_size[1]))
    if cfg.name != SMALL and cfg.name not in ENCODERS:
        raise unknown_name_error("model", cfg.name, model_names())
    _check(size)
    weights = encoder_weights(cfg)
    if cfg.name != SMALL:
        return build_unet(cfg, size, weights)
    model = build_unet_small(cfg, size)
    if weights == "imagenet":
        warnings.warn(
            "unet-small is trained from scratch: encoder_weights='imagenet' ignored",
            stacklevel=2,
        )
    elif weights.lower() != "none":
        _load_full_weights(model, weights)
    return model


def _load_full_weights(model: keras.Model, weights: str) -> None:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"encoder_weights '{weights}' is neither 'imagenet', 'none' nor an existing file"
        )
    try:
        model.load_weights(str(path))
    except (ValueError, OSError) as err:
        raise UserError(f"cannot load weights {path} into {model.name}: {err}") from err


def set_encoder_trainable(model: keras.Model, trainable: bool) -> bool:
    """Freeze or unfreeze the ``"encoder"`` sub-model; False if the model has none.

    Recompile or rebuild the train step afterwards: Keras reads ``trainable`` when it
    collects ``trainable_variables``.
    """
    try:
        encoder = model.get_layer(ENCODER_NAME)
    except ValueError:
        return False
    encoder.trainable = trainable
    return True
