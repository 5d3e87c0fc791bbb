"""Model files that carry what the next stage needs.

A segbalance ``.keras`` file is a normal Keras archive with one extra member,
``segbalance.json``: image size, preprocessing, threshold, groups, output kind and the
config that trained it. ``evaluate``, ``predict`` and ``export`` read it so they need no
flags to match training. Files are written to a temp name and renamed (no half-written
model after a crash).

Loading refuses, as a :class:`UserError` naming the file, everything that is not such a
model: no zip (an ``.h5`` renamed, a truncated copy), a zip that is not a Keras model, a
Keras model without (or with a broken) ``segbalance.json``, Python code in the file
(Keras' ``safe_mode``), and a network whose input or output does not fit the metadata.

Example:
    >>> save_model(model, "best.keras", ModelMeta(image_size=(64, 64), groups=["0", "1"]))
    >>> model, meta = load_model("best.keras")
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import keras

# Imported for their side effect: they register segbalance's custom layer (CaffePreprocess)
# and loss with Keras, which load_model needs to deserialise a model under safe_mode=True.
import segbalance.losses
import segbalance.models  # noqa: F401
from segbalance.classes import ClassSet, classes_from_json
from segbalance.config import MAX_IMAGE_SIZE
from segbalance.errors import UserError
from segbalance.io import atomic_path

META_MEMBER = "segbalance.json"
KERAS_MEMBERS = ("config.json", "model.weights.h5")  # what every Keras 3 .keras zip holds
PREPROCESSING = ("0-255",)  # pixel scalings predict/evaluate/export feed the network
OUTPUTS = ("logits",)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# What a damaged archive or a model config Keras cannot rebuild raises while loading.
LOAD_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    OSError,
    EOFError,
    zlib.error,
    zipfile.BadZipFile,
)
USE_TRAINED = "use the best.keras written by 'segbalance train'"


class NoMetadataError(UserError):
    """A Keras model file without ``segbalance.json`` (predict can still use it with flags)."""


@dataclass(frozen=True)
class ModelMeta:
    """What a trained model needs around it to be used exactly as in training.

    Attributes:
        image_size: (height, width) the network was trained at.
        groups: group names in training order (group id i is groups[i]).
        threshold: probability threshold for a foreground pixel.
        preprocessing: how pixels are scaled before the network ("0-255": keras.applications
            encoders normalise inside; the only scaling predict/evaluate/export feed).
        output: "logits" (apply a sigmoid for probabilities).
        config: the full training config as a dict (``Config.model_dump(mode="json")``).
        classes: a multiclass model's classes (``ClassSet.to_json()``: names, values,
            colours, ignore); None for binary. :attr:`class_set` parses it.
        extra: free-form facts (epoch, monitored value, segbalance version).
    """

    image_size: tuple[int, int]
    groups: list[str]
    threshold: float = 0.5
    preprocessing: str = "0-255"
    output: str = "logits"
    config: dict[str, Any] = field(default_factory=dict)
    classes: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def class_set(self) -> ClassSet | None:
        """The classes as a :class:`~segbalance.classes.ClassSet`, None for binary."""
        return None if self.classes is None else classes_from_json(self.classes, META_MEMBER)

    def to_json(self) -> str:
        raw = asdict(self)
        if raw["classes"] is None:  # a binary model's file keeps the keys it always had
            del raw["classes"]
        return json.dumps(raw, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        """Parse and check ``segbalance.json``; ValueError says which key is wrong."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"it holds a JSON {type(raw).__name__}, not an object")
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} (a newer segbalance?)")
        missing = [k for k in ("image_size", "groups") if k not in raw]
        if missing:
            raise ValueError(f"missing key(s) {', '.join(missing)}")
        meta = cls(**{**raw, "image_size": check_image_size(raw["image_size"])})
        meta.check()
        return meta

    def check(self) -> None:
        """Raise ValueError naming the first value this segbalance cannot use."""
        check_image_size(self.image_size)
        if not isinstance(self.groups, list) or not all(isinstance(g, str) for g in self.groups):
            raise ValueError(f"groups {self.groups!r} must be a list of names")
        if not self.groups:
            raise ValueError("groups is empty")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < 1:
            raise ValueError(f"threshold {t!r} must be a number strictly between 0 and 1")
        if self.preprocessing not in PREPROCESSING:
            raise ValueError(f"preprocessing {self.preprocessing!r} is not one of {PREPROCESSING}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output {self.output!r} is not one of {OUTPUTS}")
        if not isinstance(self.config, dict) or not isinstance(self.extra, dict):
            raise ValueError("config and extra must be JSON objects")
        if self.classes is not None:
            try:
                self.class_set  # noqa: B018 (parses and checks)
            except UserError as err:
                raise ValueError(str(err)) from None


def refuse_threshold(meta: ModelMeta, threshold: float | None, model_path: Any) -> None:
    """Refuse a ``--threshold`` for a multiclass model: its pixels take the likeliest class.

    Raises:
        UserError: naming the model file and the flag to drop.
    """
    if threshold is not None and meta.classes is not None:
        raise UserError(
            f"--threshold {threshold}: {model_path} is a multiclass model, whose pixels take "
            "the most probable class (no threshold); drop --threshold"
        )


def check_image_size(value: Any) -> tuple[int, int]:
    """``value`` as (height, width) if it is two whole numbers in 1..MAX_IMAGE_SIZE.

    Raises:
        ValueError: naming the value.
    """
    ok = isinstance(value, list | tuple) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or not all(1 <= v <= MAX_IMAGE_SIZE for v in value):
        raise ValueError(
            f"image_size {value!r} must be [height, width], whole numbers 1..{MAX_IMAGE_SIZE}"
        )
    return int(value[0]), int(value[1])


def save_model(model: Any, path: str | Path, meta: ModelMeta) -> Path:
    """Save a Keras model plus its metadata atomically as one ``.keras`` file."""
    path = Path(path)
    if path.suffix != ".keras":
        raise UserError(f"model path {path} must end in .keras")
    with atomic_path(path, ".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(META_MEMBER, meta.to_json())
    return path


def _not_a_model(path: Path) -> UserError:
    """Why ``path`` (an existing file that is no zip archive) is not a .keras model."""
    with path.open("rb") as fh:
        head = fh.read(len(HDF5_SIGNATURE))
    if not head:
        what = "is empty (0 bytes)"
    elif head == HDF5_SIGNATURE:
        return UserError(
            f"model file {path} is an HDF5 (.h5) file, not a .keras archive (renamed?): "
            "load it with keras.saving.load_model and save it again as .keras"
        )
    else:
        what = "is not a .keras archive (those are zip files): truncated, damaged or another kind"
    return UserError(f"model file {path} {what}; copy it again, or {USE_TRAINED}")


def _members(path: Path) -> list[str]:
    """The names inside the archive ``path``, or a UserError saying what the file is."""
    if path.is_dir():
        raise UserError(f"model {path} is a folder; pass a .keras file (a SavedModel is no input)")
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; pass the best.keras of a run")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise _not_a_model(path) from None
    lacking = [m for m in KERAS_MEMBERS if m not in names]
    if lacking:
        raise UserError(
            f"model file {path} is a zip archive but not a Keras model (no {lacking[0]}); "
            f"{USE_TRAINED}"
        )
    return names


def read_meta(path: str | Path) -> ModelMeta:
    """Read only the metadata of a segbalance model file (no network is built).

    Raises:
        NoMetadataError: a Keras model without ``segbalance.json``.
        UserError: not a Keras model file, or its ``segbalance.json`` is broken.
    """
    path = Path(path)
    if META_MEMBER not in _members(path):
        raise NoMetadataError(
            f"{path} is a Keras model without segbalance metadata ({META_MEMBER}): written by "
            "another tool or by plain model.save. 'segbalance predict' can use it when you give "
            "--image-size H W and --threshold T; evaluate and export need the best.keras "
            "written by 'segbalance train'"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read(META_MEMBER).decode("utf-8")
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, UnicodeDecodeError) as err:
        raise UserError(f"model file {path} is damaged ({err}); copy it again") from err
    try:
        return ModelMeta.from_json(text)
    except (ValueError, TypeError) as err:
        raise UserError(
            f"model file {path}: its {META_MEMBER} is broken ({err}); it was edited or damaged: "
            f"{USE_TRAINED}, or save it again with segbalance.artifacts.save_model"
        ) from err


def _load_network(path: Path, compile: bool) -> Any:
    try:
        return keras.saving.load_model(str(path), compile=compile, safe_mode=True)
    except LOAD_ERRORS as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "safe_mode" in str(err):
            raise UserError(
                f"model file {path} holds Python code (a Lambda layer or a lambda function), "
                "and segbalance loads models with Keras' safe_mode, which refuses code in model "
                "files because it could run anything. If you built the model yourself, replace "
                "the Lambda by built-in or registered layers (keras.saving."
                "register_keras_serializable) and save it again"
            ) from err
        raise UserError(
            f"model file {path} cannot be loaded as a Keras model ({first}); it is damaged or "
            f"needs layers segbalance does not have: {USE_TRAINED}"
        ) from err


def _shape(tensors: Any) -> tuple[Any, ...] | None:
    """The shape of a model's only input or output, None when it has several."""
    tensors = list(tensors) if isinstance(tensors, list | tuple) else [tensors]
    return tuple(tensors[0].shape) if len(tensors) == 1 else None


def check_network(
    model: Any, meta: ModelMeta, path: str | Path, size_from: str = META_MEMBER
) -> None:
    """Refuse a network whose input or output does not fit ``meta`` and segbalance.

    ``size_from`` names where ``meta.image_size`` came from, for the message.

    Raises:
        UserError: naming the file, the shapes, and what was expected.
    """
    h, w = meta.image_size
    spec = meta.class_set
    k = 1 if spec is None else spec.num_classes
    given, made = _shape(model.inputs), _shape(model.outputs)
    if given is None or len(given) != 4 or given[3] != 3:
        raise UserError(
            f"model file {path} takes input {given or 'of several tensors'}; segbalance feeds "
            "one batch of RGB images [batch, height, width, 3]"
        )
    if spec is not None and (made is None or len(made) != 4 or made[3] != k):
        raise UserError(
            f"model file {path} outputs {made or 'several tensors'}; its {META_MEMBER} names "
            f"{k} classes ({', '.join(spec.names)}), so segbalance needs {k} class logits per "
            f"pixel [batch, height, width, {k}]; {USE_TRAINED}"
        )
    if made is None or len(made) != 4 or made[3] != k:
        raise UserError(
            f"model file {path} outputs {made or 'several tensors'}; segbalance needs one "
            "foreground logit per pixel [batch, height, width, 1] (a binary segmentation model)"
        )
    if any(n is not None and n != v for n, v in zip(given[1:3], (h, w), strict=True)):
        raise UserError(
            f"model file {path}: the image size {h}x{w} from {size_from} does not match the "
            f"network, which takes {given[1]}x{given[2]} images; {USE_TRAINED}, or give the "
            "network's size"
        )


def load_model(
    path: str | Path, compile: bool = False, fallback: ModelMeta | None = None
) -> tuple[Any, ModelMeta]:
    """Load a model with ``safe_mode=True`` and its metadata, both checked.

    ``fallback`` is the metadata of a plain Keras model (no ``segbalance.json``), e.g. from
    predict's ``--image-size`` and ``--threshold``; a segbalance model ignores it. The
    custom layers and loss are registered by the imports at the top of this module.

    Raises:
        UserError: the file is not a usable segbalance (or, with ``fallback``, Keras) model.
    """
    path = Path(path)
    size_from = META_MEMBER
    try:
        meta = read_meta(path)
    except NoMetadataError:
        if fallback is None:
            raise
        meta, size_from = fallback, "the command line"
    model = _load_network(path, compile)
    check_network(model, meta, path, size_from)
    return model, meta
