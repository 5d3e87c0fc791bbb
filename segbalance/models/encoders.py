"""keras.applications encoders: constructor, skip layers and input normalisation.

Every segbalance model takes float32 RGB in 0..255. Each encoder knows how to bring
those pixels to what its backbone was trained on, as a serialisable layer *inside* the
model (never a ``Lambda``, which ``safe_mode=True`` refuses to load):

* EfficientNet, MobileNetV3 and ConvNeXt normalise inside the keras.applications model;
* ResNet50 wants caffe preprocessing (RGB->BGR, ImageNet mean subtracted): :class:`CaffePreprocess`;
* MobileNetV2 wants [-1, 1]: a ``Rescaling(1/127.5, offset=-1)``.

The backbone is wrapped as a sub-model named ``"encoder"`` whose outputs are the skip
features at strides 2, 4, 8, 16 (``None`` where a backbone has none, e.g. ConvNeXt at
stride 2) followed by the stride-32 bottleneck.

Example:
    >>> spec = get_encoder("efficientnetb4")
    >>> spec.skips
    ('block2a_expand_activation', 'block3a_expand_activation', ...)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
from keras import layers

from segbalance.errors import UserError, unknown_name_error

ENCODER_NAME = "encoder"
STRIDES = (2, 4, 8, 16)


@keras.saving.register_keras_serializable(package="segbalance")
class CaffePreprocess(layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet channel means (ResNet50's "caffe" mode)."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs: Any) -> Any:
        x = keras.ops.flip(inputs, axis=-1)
        return x - keras.ops.cast(keras.ops.convert_to_tensor(self.MEAN_BGR), x.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def _rescale_minus1_1() -> layers.Layer:
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")


def _caffe() -> layers.Layer:
    return CaffePreprocess(name="normalize")


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one keras.applications backbone for a U-Net.

    Attributes:
        constructor: the ``keras.applications`` function.
        skips: layer names at strides 2, 4, 8, 16 (``None``: no feature at that stride);
            an empty tuple means "find them by resolution" (MobileNetV3 names its
            activations automatically, so names are not stable).
        normalize: factory for the layer that maps 0..255 to the backbone's input range,
            or None when the backbone normalises by itself.
    """

    constructor: Callable[..., keras.Model]
    skips: tuple[str | None, ...]
    normalize: Callable[[], layers.Layer] | None = None


_EFFNET_SKIPS = (
    "block2a_expand_activation",
    "block3a_expand_activation",
    "block4a_expand_activation",
    "block6a_expand_activation",
)


def _registry() -> dict[str, EncoderSpec]:
    apps = keras.applications
    effnets = [
        apps.EfficientNetB0,
        apps.EfficientNetB1,
        apps.EfficientNetB2,
        apps.EfficientNetB3,
        apps.EfficientNetB4,
        apps.EfficientNetB5,
        apps.EfficientNetB6,
        apps.EfficientNetB7,
    ]
    reg = {f"efficientnetb{i}": EncoderSpec(fn, _EFFNET_SKIPS) for i, fn in enumerate(effnets)}
    reg["resnet50"] = EncoderSpec(
        apps.ResNet50,
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
        _caffe,
    )
    reg["mobilenetv2"] = EncoderSpec(
        apps.MobileNetV2,
        (
            "block_1_expand_relu",
            "block_3_expand_relu",
            "block_6_expand_relu",
            "block_13_expand_relu",
        ),
        _rescale_minus1_1,
    )
    reg["mobilenetv3small"] = EncoderSpec(apps.MobileNetV3Small, ())
    reg["mobilenetv3large"] = EncoderSpec(apps.MobileNetV3Large, ())
    reg["convnext_tiny"] = EncoderSpec(
        apps.ConvNeXtTiny,
        (
            None,
            "convnext_tiny_stage_0_block_2_identity",
            "convnext_tiny_stage_1_block_2_identity",
            "convnext_tiny_stage_2_block_8_identity",
        ),
    )
    return reg


ENCODERS: dict[str, EncoderSpec] = _registry()


def get_encoder(name: str) -> EncoderSpec:
    """The encoder spec for ``name``; unknown names list the valid ones."""
    if name not in ENCODERS:
        raise unknown_name_error("encoder", name, ENCODERS)
    return ENCODERS[name]


def _skips_by_resolution(backbone: keras.Model, height: int) -> list[str]:
    """For each stride, the last non-padding layer whose output has height ``height/stride``.

    That is the feature right before the next downsampling, the same place the
    tutorial's named EfficientNet skips sit.
    """
    names = []
    for stride in STRIDES:
        found = None
        for layer in backbone.layers:
            shape = getattr(layer, "output", None)
            shape = getattr(shape, "shape", None)
            if (
                shape is not None
                and len(shape) == 4
                and shape[1] == height // stride
                and not isinstance(layer, layers.ZeroPadding2D)
            ):
                found = layer.name
        if found is None:
            raise RuntimeError(f"{backbone.name}: no layer at stride {stride}")
        names.append(found)
    return names


def _backbone_weights(weights: str) -> str | None:
    """Map ``encoder_weights`` to what keras.applications accepts, checking local files."""
    if weights == "imagenet":
        return "imagenet"  # downloaded and cached by Keras on first use
    if weights.lower() == "none":
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"encoder_weights '{weights}' is neither 'imagenet', 'none' nor an existing file; "
            "pass a weights file (.weights.h5 or a Keras applications *_notop.h5)"
        )
    return str(path)


def build_encoder(
    name: str, image_size: tuple[int, int], weights: str = "imagenet"
) -> tuple[keras.Model, layers.Layer | None]:
    """Build the backbone as a sub-model named ``encoder`` plus its normalisation layer.

    Args:
        name: encoder key, e.g. ``"efficientnetb4"``.
        image_size: (height, width), multiples of 32.
        weights: ``"imagenet"``, ``"none"`` or a local weights file for the backbone.

    Returns:
        ``(encoder, normalize)``: encoder outputs are the skip features that exist
        (strides 2..16, in order) then the stride-32 bottleneck; ``normalize`` is None
        when the backbone normalises inside. :func:`skip_strides` says which strides exist.
    """
    spec = get_encoder(name)
    source = _backbone_weights(weights)
    kwargs: dict[str, Any] = {
        "include_top": False,
        "weights": source,
        "input_shape": (*image_size, 3),
    }
    try:
        backbone = spec.constructor(**kwargs)
    except Exception as err:
        if source == "imagenet":
            # Keras downloads the file on first use; offline this is the usual failure.
            raise UserError(
                f"cannot get the imagenet weights of {name}: {err}. Check the network, or "
                "set model.encoder_weights to a local weights file or 'none'"
            ) from err
        if source is not None:
            raise UserError(
                f"cannot load encoder weights {source} into {name}: {err}. "
                f"Use weights saved from a {name} backbone with include_top=False."
            ) from err
        raise
    skips = list(spec.skips) or _skips_by_resolution(backbone, image_size[0])
    outputs = [backbone.get_layer(s).output for s in skips if s is not None]
    outputs.append(backbone.output)
    encoder = keras.Model(backbone.inputs, outputs, name=ENCODER_NAME)
    return encoder, spec.normalize() if spec.normalize else None


def skip_strides(name: str) -> tuple[bool, ...]:
    """Which of the strides 2, 4, 8, 16 have a skip feature for encoder ``name``."""
    spec = get_encoder(name)
    return tuple(s is not None for s in spec.skips) if spec.skips else (True,) * len(STRIDES)
