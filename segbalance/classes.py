"""Classes: the classes file, how a mask encodes classes, and statistics of classes.

A classes file (YAML) names the classes of a multiclass task and how masks encode them::

    classes:
      - {name: background, value: 0}
      - {name: nail, value: 1, color: [255, 0, 0]}
      - {name: skin, value: 2, color: [0, 255, 0]}
    ignore: 255          # optional: pixels never counted in losses or metrics

The **first class is the background**: it is trained and reported, but a group's ``iou`` is
the mean over the other (foreground) classes. ``value`` is the gray level of a label-index
mask (or the index of a palette PNG); ``color`` is the RGB of a colour mask and of predicted
colour masks. Inside segbalance a label mask holds class *indices* (the position in the
file, 0..K-1) and :data:`IGNORE_INDEX` for ignored pixels, whatever values the files use.

Example:
    >>> spec = load_classes("classes.yaml")  # doctest: +SKIP
    >>> spec.names, spec.num_classes, spec.foreground
    (['background', 'nail', 'skin'], 3, ['nail', 'skin'])
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from segbalance.errors import UserError

#: Class index of an ignored pixel inside segbalance (pipeline, losses, metrics).
IGNORE_INDEX = 255
RGB = tuple[int, int, int]
#: Most classes a label mask can hold (indices 0..254; 255 is the ignore index).
MAX_CLASSES = 255
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Colours of predicted masks for classes the file gives none (background black).
_PALETTE = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)


class ClassDef(BaseModel):
    """One class: a name, its value in label-index masks and an optional RGB colour."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    value: int = Field(ge=0, le=255)
    color: tuple[int, int, int] | None = None

    @field_validator("color", mode="before")
    @classmethod
    def _rgb(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, list | tuple) or len(v) != 3):
            raise ValueError(f"color {v!r} must be three numbers [R, G, B], each 0..255")
        return v

    @model_validator(mode="after")
    def _checks(self) -> ClassDef:
        if not _NAME.match(self.name):
            raise ValueError(
                f"class name '{self.name}': use letters, digits, '_', '.' or '-' "
                "(it names JSON keys and CSV columns)"
            )
        if self.color is not None and not all(0 <= c <= 255 for c in self.color):
            raise ValueError(f"class '{self.name}' colour {list(self.color)} must be 0..255 each")
        return self


class ClassSet(BaseModel):
    """The classes of a task (see the module doc); the first one is the background."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    classes: tuple[ClassDef, ...]
    ignore: int | None = Field(None, ge=0, le=255, description="value of ignored pixels")
    ignore_color: tuple[int, int, int] | None = Field(
        None, description="colour of ignored pixels in colour masks (e.g. VOC's borders)"
    )

    @field_validator("ignore", mode="before")
    @classmethod
    def _ignore_is_a_value(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            raise ValueError(
                f"ignore {list(v)} is a colour: write 'ignore_color: {list(v)}' for colour "
                "masks ('ignore' is a gray value 0..255)"
            )
        return v

    @model_validator(mode="after")
    def _unique(self) -> ClassSet:
        # Counted here, not by Field(min_length): pydantic would count only the valid items
        # and report "at least 2" next to the real error of a bad one.
        if not 2 <= len(self.classes) <= MAX_CLASSES:
            raise ValueError(
                f"{len(self.classes)} class(es) given: list 2..{MAX_CLASSES}, background first"
            )
        columns: tuple[tuple[str, list[str]], ...] = (
            ("name", [c.name for c in self.classes]),
            ("value", [str(c.value) for c in self.classes]),
            ("color", [str(list(c.color)) if c.color else "" for c in self.classes]),
        )
        distinct = sorted(set(self.names))
        for name in distinct:  # exact repeats are named by the loop below
            same = [n for n in distinct if n.lower() == name.lower()]
            if len(same) > 1:
                raise ValueError(
                    f"classes {' and '.join(same)} differ only in case: they would share "
                    "output folders on macOS and Windows; rename one"
                )
        for what, values in columns:
            for v in dict.fromkeys(x for x in values if x and values.count(x) > 1):
                names = [c.name for c, x in zip(self.classes, values, strict=True) if x == v]
                raise ValueError(f"classes {' and '.join(names)} share the {what} {v}")
        if self.ignore is not None and self.ignore in self.values:
            raise ValueError(f"ignore {self.ignore} is also the value of a class")
        colors = [c.color for c in self.classes if c.color is not None]
        if self.ignore_color is not None and self.ignore_color in colors:
            raise ValueError(f"ignore_color {list(self.ignore_color)} is also a class colour")
        return self

    @property
    def names(self) -> list[str]:
        """Class names in index order."""
        return [c.name for c in self.classes]

    @property
    def values(self) -> list[int]:
        """Mask values in index order."""
        return [c.value for c in self.classes]

    @property
    def num_classes(self) -> int:
        """K, background included: the model's output channels."""
        return len(self.classes)

    @property
    def foreground(self) -> list[str]:
        """Every class but the first (the background)."""
        return self.names[1:]

    def mask_colors(self) -> list[RGB | None]:
        """Each class's colour in colour masks: its own, black for a background without one."""
        out = [c.color for c in self.classes]
        if out[0] is None and (0, 0, 0) not in out:
            out[0] = (0, 0, 0)
        return out

    @property
    def has_colors(self) -> bool:
        """Whether every class has a mask colour (colour masks can be read)."""
        return all(c is not None for c in self.mask_colors())

    def palette(self) -> np.ndarray:
        """uint8 [K, 3]: each class's colour, or a distinct default one."""
        rows = [rgb or _PALETTE[i % len(_PALETTE)] for i, rgb in enumerate(self.mask_colors())]
        return np.array(rows, np.uint8)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (the manifest sidecar's ``classes``)."""
        return self.model_dump(mode="json", exclude_none=True)


def classes_from_json(raw: Any, source: str) -> ClassSet:
    """A :class:`ClassSet` from a mapping (YAML or a sidecar); UserError naming ``source``."""
    if not isinstance(raw, Mapping):
        raise UserError(
            f"classes file {source} must be a mapping with a 'classes' list, e.g. "
            "'classes: [{name: background, value: 0}, {name: nail, value: 1}]'"
        )
    try:
        return ClassSet.model_validate(dict(raw))
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(map(str, e["loc"]))
            lines.append(f"{key}: {e['msg']}" if key else e["msg"])
        raise UserError(
            f"invalid classes file {source}:\n  " + "\n  ".join(lines) + "\n  (write each class "
            "as {name: NAME, value: 0..255, color: [R, G, B]}; at least two, background first)"
        ) from err


def load_classes(path: str | Path) -> ClassSet:
    """Read and check a classes file (YAML).

    Raises:
        UserError: unreadable file, bad YAML or an invalid class, naming the file and key.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"classes file {path} is a folder; give the YAML file itself")
    if not path.is_file():
        raise UserError(f"classes file {path} does not exist; write one (see 'prepare --help')")
    text = ""
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        hint = " (YAML indents with spaces, not tabs)" if "\t" in text else ""
        raise UserError(f"cannot read classes file {path}{hint}: {err}") from err
    return classes_from_json(raw, str(path))


def class_pixel_fractions(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float64 [K]: share of the non-ignored pixels of a label mask in each class."""
    flat = np.asarray(labels).reshape(-1)
    flat = flat[flat != IGNORE_INDEX]
    counts = np.bincount(flat.astype(np.int64), minlength=num_classes)[:num_classes]
    return counts / max(len(flat), 1)


def auto_class_weights(fractions: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Inverse square root of each class's pixel frequency, normalised to mean 1.

    Args:
        fractions: [N, K] per-image class pixel fractions of the train split.
        names: the K class names.

    A class absent from every train image gets the largest weight of the present ones
    (its frequency is unknown, not infinite).
    """
    freq = np.asarray(fractions, np.float64).reshape(-1, len(names)).mean(axis=0)
    present = freq > 0
    if not present.any():
        return dict.fromkeys(names, 1.0)
    raw = np.zeros(len(names))
    raw[present] = 1.0 / np.sqrt(freq[present])
    raw[~present] = raw[present].max()
    raw = raw / raw.mean()
    return {n: float(w) for n, w in zip(names, raw, strict=True)}


def resolve_class_weights(
    weights: Mapping[str, float] | str | None, spec: ClassSet, fractions: np.ndarray | None
) -> list[float] | None:
    """Class weights in index order from the config (a mapping, ``auto`` or None).

    Raises:
        UserError: a name not among the classes, or ``auto`` without train fractions.
    """
    if weights is None:
        return None
    if weights == "auto":
        if fractions is None:
            raise UserError("loss.class_weights 'auto' needs the manifest's class fractions")
        auto = auto_class_weights(fractions, spec.names)
        return [auto[n] for n in spec.names]
    if isinstance(weights, str):
        raise UserError(f"loss.class_weights '{weights}': give 'auto' or a mapping NAME: WEIGHT")
    unknown = sorted(set(weights) - set(spec.names))
    if unknown:
        raise UserError(
            f"loss.class_weights names unknown class(es) {', '.join(unknown)}; the classes "
            f"are {', '.join(spec.names)}"
        )
    return [float(weights.get(n, 1.0)) for n in spec.names]
