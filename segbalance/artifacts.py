"""Model files that carry what the next stage needs.

A segbalance ``.keras`` file is a normal Keras archive with one extra member,
``segbalance.json``: image size, preprocessing, threshold, groups, output kind and the
config that trained it. ``evaluate``, ``predict`` and ``export`` read it so they need no
flags to match training. Files are written to a temp name and renamed (no half-written
model after a crash).

Example:
    >>> save_model(model, "best.keras", ModelMeta(image_size=(64, 64), groups=["0", "1"]))
    >>> model, meta = load_model("best.keras")
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras

# Imported for their side effect: they register segbalance's custom layer (CaffePreprocess)
# and loss with Keras, which load_model needs to deserialise a model under safe_mode=True.
import segbalance.losses
import segbalance.models  # noqa: F401
from segbalance.errors import UserError
from segbalance.io import atomic_path

META_MEMBER = "segbalance.json"


@dataclass(frozen=True)
class ModelMeta:
    """What a trained model needs around it to be used exactly as in training.

    Attributes:
        image_size: (height, width) the network was trained at.
        groups: group names in training order (group id i is groups[i]).
        threshold: probability threshold for a foreground pixel.
        preprocessing: how pixels are scaled before the network ("0-255" for
            keras.applications encoders that normalise inside, "0-1" otherwise).
        output: "logits" (apply a sigmoid for probabilities).
        config: the full training config as a dict (``Config.model_dump(mode="json")``).
        extra: free-form facts (epoch, monitored value, segbalance version).
    """

    image_size: tuple[int, int]
    groups: list[str]
    threshold: float = 0.5
    preprocessing: str = "0-255"
    output: str = "logits"
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        raw = json.loads(text)
        raw["image_size"] = tuple(raw["image_size"])
        return cls(**raw)


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


def read_meta(path: str | Path) -> ModelMeta:
    """Read only the metadata of a segbalance model file (no TensorFlow needed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; pass the best.keras of a run")
    try:
        with zipfile.ZipFile(path) as archive:
            return ModelMeta.from_json(archive.read(META_MEMBER).decode())
    except (zipfile.BadZipFile, KeyError) as err:
        raise UserError(
            f"{path} is not a segbalance model (no {META_MEMBER}); "
            "use the best.keras written by 'segbalance train'"
        ) from err


def load_model(path: str | Path, compile: bool = False) -> tuple[Any, ModelMeta]:
    """Load a model with ``safe_mode=True`` and its metadata.

    segbalance's custom layers and loss are registered with Keras by the imports of
    ``segbalance.models`` and ``segbalance.losses`` at the top of this module.
    """
    meta = read_meta(path)
    model = keras.saving.load_model(str(path), compile=compile, safe_mode=True)
    return model, meta
