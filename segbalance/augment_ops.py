"""Augmentation ops as config: one pydantic model per op, declared once, no TensorFlow.

Each op class declares its parameters with their bounds, what it moves (it is a
:class:`DualOp` or an :class:`ImageOnlyOp`, as albumentations' ``DualTransform`` /
``ImageOnlyTransform``: ``targets``) and whether its kernel compiles with XLA (``xla``).
The TF kernels live in :mod:`segbalance.pipeline.kernels`; this module stays importable by
:mod:`segbalance.config` without starting TensorFlow, so a bad op fails at ``load_config``.

An op list is written as in YAML: ``[{type: flip, p: 0.5}, {type: blur, sigma: [0.5, 2]}]``;
``type`` picks the op, ``p`` is the probability that it is applied to a sample (default 1).

Example:
    >>> Blur(sigma=0.5, p=0.2)
    Blur(type='blur', p=0.2, sigma=(0.5, 0.5), kernel_size=5)
    >>> get_op("flip").targets, get_op("flip").xla
    ('image+mask', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal, NoReturn, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from segbalance.errors import unknown_name_error

Targets = Literal["image", "image+mask"]
FillMode = Literal["reflect", "wrap", "constant", "nearest"]  # what Keras' layers accept


class AugmentOp(BaseModel):
    """One op of an augmentation list; subclasses narrow ``type`` to their own name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    targets: ClassVar[Targets]
    xla: ClassVar[bool]

    type: str  # overridden by a Literal in each op: the discriminator of the union
    p: float = Field(1.0, ge=0.0, le=1.0, description="probability of applying it to a sample")


class DualOp(AugmentOp):
    """An op that moves image and mask alike (albumentations' ``DualTransform``)."""

    targets: ClassVar[Targets] = "image+mask"


class ImageOnlyOp(AugmentOp):
    """An op that changes the image only; the mask passes unchanged (``ImageOnlyTransform``)."""

    targets: ClassVar[Targets] = "image"


class Flip(DualOp):
    """Mirror image and mask (exact, no resampling)."""

    xla: ClassVar[bool] = True
    type: Literal["flip"] = "flip"
    mode: Literal["horizontal", "vertical", "horizontal_and_vertical"] = "horizontal"


class Affine(DualOp):
    """Scale, rotation and shift about the centre in ONE resampling (like ShiftScaleRotate)."""

    xla: ClassVar[bool] = True
    type: Literal["affine"] = "affine"
    scale: float = Field(0.2, ge=0.0, lt=1.0, description="zoom drawn in 1 ± scale")
    degrees: float = Field(30.0, ge=0.0, le=180.0, description="angle drawn in ± degrees")
    translate: float = Field(0.0, ge=0.0, lt=1.0, description="shift drawn in ± this * size")


class Rotate(DualOp):
    """keras.layers.RandomRotation by up to ± ``degrees``."""

    xla: ClassVar[bool] = False
    type: Literal["rotate"] = "rotate"
    degrees: float = Field(30.0, ge=0.0, le=360.0)
    fill_mode: FillMode = "reflect"


class Scale(DualOp):
    """keras.layers.RandomZoom by ± ``factor``, aspect ratio kept."""

    xla: ClassVar[bool] = False
    type: Literal["scale"] = "scale"
    factor: float = Field(0.2, ge=0.0, lt=1.0)
    fill_mode: FillMode = "reflect"


class Translate(DualOp):
    """keras.layers.RandomTranslation by ± ``fraction`` of the height and the width."""

    xla: ClassVar[bool] = False
    type: Literal["translate"] = "translate"
    fraction: float = Field(0.1, ge=0.0, le=1.0)
    fill_mode: FillMode = "reflect"


class Brightness(ImageOnlyOp):
    """Add an offset drawn in ± ``factor`` * 255."""

    xla: ClassVar[bool] = True
    type: Literal["brightness"] = "brightness"
    factor: float = Field(0.2, ge=0.0, le=1.0)


class Contrast(ImageOnlyOp):
    """Scale each channel about its mean by a factor drawn in 1 ± ``factor``."""

    xla: ClassVar[bool] = True
    type: Literal["contrast"] = "contrast"
    factor: float = Field(0.2, ge=0.0, le=1.0)


class Hue(ImageOnlyOp):
    """Shift the hue by up to ± ``factor`` of a turn."""

    xla: ClassVar[bool] = True
    type: Literal["hue"] = "hue"
    factor: float = Field(0.1, ge=0.0, le=1.0)


class Saturation(ImageOnlyOp):
    """keras.layers.RandomSaturation (0.5 keeps the image; 0 grey, 1 fully saturated)."""

    xla: ClassVar[bool] = False
    type: Literal["saturation"] = "saturation"
    factor: float = Field(0.2, ge=0.0, le=1.0)


class Blur(ImageOnlyOp):
    """Gaussian blur with a sigma drawn per sample in [low, high]."""

    xla: ClassVar[bool] = True
    type: Literal["blur"] = "blur"
    sigma: tuple[float, float] = Field((0.1, 1.5), description="[low, high] or one value")
    kernel_size: int = Field(5, ge=1, description="odd")

    @field_validator("sigma", mode="before")
    @classmethod
    def _one_or_two(cls, v: Any) -> Any:
        if isinstance(v, int | float):
            return (v, v)
        return (v[0], v[-1]) if isinstance(v, Sequence) and len(v) == 1 else v

    @field_validator("sigma")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"sigma {list(v)}: use 0 < low <= high")
        return v

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("use an odd size")
        return v


class Noise(ImageOnlyOp):
    """Additive Gaussian luminance noise, sigma drawn in [0, ``std``] (0..255 units).

    Not XLA: XLA's random normals are ~10x slower than TF's kernel on a CPU.
    """

    xla: ClassVar[bool] = False
    type: Literal["noise"] = "noise"
    std: float = Field(8.0, ge=0.0, le=255.0)


AnyOp = Annotated[
    Flip
    | Affine
    | Rotate
    | Scale
    | Translate
    | Brightness
    | Contrast
    | Hue
    | Saturation
    | Blur
    | Noise,
    Field(discriminator="type"),
]
OPS: dict[str, type[AugmentOp]] = {
    cls.model_fields["type"].default: cls for cls in get_args(get_args(AnyOp)[0])
}

DEFAULT_OPS: tuple[AugmentOp, ...] = (
    Flip(mode="horizontal", p=0.5),
    Affine(scale=0.2, degrees=30.0, p=0.5),
    Brightness(factor=0.2, p=0.5),
    Contrast(factor=0.2, p=0.5),
    Hue(factor=0.1, p=0.3),
    Blur(sigma=(0.1, 1.5), kernel_size=5, p=0.2),
    Noise(std=8.0, p=0.2),
)


def get_op(name: str) -> type[AugmentOp]:
    """The op class of ``name`` (raises a UserError with the closest valid name)."""
    if name not in OPS:
        raise unknown_name_error("augmentation op", name, OPS)
    return OPS[name]


Problem = tuple[tuple[int | str, ...], str, Any]  # (key path, message, offending value)


def _raise(problems: list[Problem]) -> NoReturn:
    # One custom error type whose message is ours: no "Value error, " prefix, no union labels.
    errors = [
        InitErrorDetails(
            type=PydanticCustomError("augment_op", "{message}", {"message": message}),
            loc=loc,
            input=value,
        )
        for loc, message, value in problems
    ]
    raise ValidationError.from_exception_data("augment", errors)


def _pydantic_problem(e: Any) -> Problem:
    # load_config shows a scalar input next to its key; ours need no "Value error, " prefix.
    message = str(e["ctx"]["error"]) if e["type"] == "value_error" else e["msg"]
    return (e["loc"], message, e["input"])


def _op_problems(raw: Any) -> list[Problem]:
    """The problems of one raw op, each at its key (empty when the op is valid)."""
    if not isinstance(raw, dict):
        return [((), "an op is a mapping such as {type: flip, p: 0.5}", raw)]
    if "type" not in raw:
        return [(("type",), f"every op needs a 'type': one of {', '.join(OPS)}", raw)]
    name = str(raw["type"])
    if name not in OPS:
        return [(("type",), str(unknown_name_error("augmentation op", name, OPS)), name)]
    fields = OPS[name].model_fields
    valid = [k for k in fields if k != "type"]
    kind = f"parameter of op '{name}':"
    unknown = [k for k in raw if k not in fields]
    if unknown:
        return [((k,), str(unknown_name_error(kind, str(k), valid)), raw[k]) for k in unknown]
    try:
        OPS[name].model_validate(raw)
    except ValidationError as err:
        return [_pydantic_problem(e) for e in err.errors()]
    return []


def validate_op_list(value: Any) -> Any:
    """Check an op list op by op, so each error names its index and key.

    Pydantic's own errors for ``list[union] | Literal`` would name union members instead
    (``list[tagged-union[Flip,...]].1.flip.mode``) and report the Literal branch too.
    Valid input passes on unchanged to the field's type, which builds the op models.
    """
    if isinstance(value, str) and value in ("default", "none"):
        return value
    if not isinstance(value, list | tuple):
        _raise([((), "use 'default', 'none' or a list of ops", value)])
    problems = [
        ((i, *loc), message, bad)
        for i, raw in enumerate(value)
        if not isinstance(raw, AugmentOp)
        for loc, message, bad in _op_problems(raw)
    ]
    if problems:
        _raise(problems)
    return value


# The type of ``augment.default`` and of each ``augment.groups`` value.
OpList = Annotated[list[AnyOp] | Literal["default", "none"], BeforeValidator(validate_op_list)]
