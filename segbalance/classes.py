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
from PIL import Image
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

    def value_table(self) -> np.ndarray:
        """uint8 [256]: class index of each gray value; ignore and unknown values give 255.

        Unknown values are refused by prepare, so training never meets one.
        """
        table = np.full(256, IGNORE_INDEX, np.uint8)
        for index, value in enumerate(self.values):
            table[value] = index
        return table

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


#: Mask rules of multiclass rows (the manifest's ``mask_rule``): ``class-value`` reads gray
#: levels or palette indices by ``value``, ``class-color`` reads RGB colours by ``color``.
CLASS_RULES = ("class-value", "class-color")


class ClassRuleError(ValueError):
    """A mask no class rule reads unambiguously (``fix`` says what to do)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.fix = fix


def _palette_clash(img: Image.Image, spec: ClassSet) -> str | None:
    """A palette PNG whose index i is drawn in the colour the file gives another class."""
    palette = img.getpalette() or []
    by_colour = {
        str(list(rgb)): c for c, rgb in zip(spec.classes, spec.mask_colors(), strict=True) if rgb
    }
    for index in np.unique(np.asarray(img)):
        rgb = list(palette[3 * int(index) : 3 * int(index) + 3])
        other = by_colour.get(str(rgb))
        if other is not None and other.value != int(index):
            return (
                f"palette index {int(index)} is drawn {rgb}, the colour of class "
                f"'{other.name}' (value {other.value}), but palette masks are read by index"
            )
    return None


def class_rule(img: Image.Image, spec: ClassSet) -> str:
    """The rule a mask is read by: its values, or its colours when it is RGB(A) in colour.

    Gray, 16-bit and palette masks are read by value (a palette PNG's indices, as VOC label
    masks store classes). An RGB(A) mask whose three channels agree is gray saved as RGB.

    Raises:
        ClassRuleError: a colour mask while the classes file gives a class no colour; a
            palette mask whose palette draws an index in another class's colour.
    """
    if img.mode == "P" and any(c.color for c in spec.classes):
        clash = _palette_clash(img, spec)
        if clash:
            raise ClassRuleError(
                clash,
                "save the mask as RGB (PIL: Image.open(p).convert('RGB').save(p)) to read it "
                "by colour, or fix its palette so index = class value",
            )
    if img.mode not in ("RGB", "RGBA"):
        return "class-value"
    rgb = np.asarray(img.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return "class-value"
    if not spec.has_colors:
        missing = [
            c.name for c, rgb in zip(spec.classes, spec.mask_colors(), strict=True) if rgb is None
        ]
        raise ClassRuleError(
            f"a colour mask, but the classes file gives no colour for {', '.join(missing)}",
            "give every class a colour ('color: [R, G, B]'), or save the mask with class "
            "values (gray or palette PNG)",
        )
    return "class-color"


def _mask_pixels(img: Image.Image, rule: str) -> np.ndarray:
    """int64 [H, W] values (class-value) or 24-bit RGB codes (class-color)."""
    if rule == "class-color":
        rgb = np.asarray(img.convert("RGB"), np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if img.mode in ("RGB", "RGBA"):
        return np.asarray(img, np.int64)[..., 0]
    if img.mode in ("1", "LA", "PA"):
        img = img.convert("L") if img.mode != "PA" else img.getchannel(0)
    return np.asarray(img, np.int64).reshape(img.height, img.width)


def _code(rgb: tuple[int, int, int]) -> int:
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


def label_map(img: Image.Image, spec: ClassSet, rule: str) -> tuple[np.ndarray, list[str]]:
    """A mask as class indices: uint8 [H, W] (ignored pixels :data:`IGNORE_INDEX`).

    Returns:
        The indices, and the values (``"7"``) or colours (``"[12, 0, 255]"``) found that no
        class and not the ignore value names (up to 10; empty when the mask is good).
    """
    if rule not in CLASS_RULES:
        raise ValueError(f"unknown class rule '{rule}'; valid: {', '.join(CLASS_RULES)}")
    pixels = _mask_pixels(img, rule)
    if rule == "class-color":
        keys = [_code(rgb) for rgb in spec.mask_colors() if rgb is not None]
        ignore = None if spec.ignore_color is None else _code(spec.ignore_color)
    else:
        keys, ignore = spec.values, spec.ignore
    lookup = dict(zip(keys, range(len(keys)), strict=True))
    if ignore is not None:
        lookup[ignore] = IGNORE_INDEX
    found = np.unique(pixels)
    out = np.full(pixels.shape, IGNORE_INDEX, np.uint8)
    unknown = []
    for value in found:
        index = lookup.get(int(value))
        if index is None:
            unknown.append(int(value))
        elif index != IGNORE_INDEX:
            out[pixels == value] = index
    shown = [_show(v, rule) for v in unknown[:10]]
    return out, shown


def _show(value: int, rule: str) -> str:
    if rule == "class-color":
        return str([(value >> 16) & 255, (value >> 8) & 255, value & 255])
    return str(value)


def read_label_mask(path: str | Path, spec: ClassSet, rule: str) -> np.ndarray:
    """uint8 [H, W] class indices of a mask file (prepare has checked it; training reads it).

    Raises:
        ValueError: the mask holds values (or colours) no class names: it changed after
            prepare, and reading them as anything would train or score wrong labels.
    """
    with Image.open(path) as img:
        img.load()
        labels, unknown = label_map(img, spec, rule)
    if unknown:
        what = "colours" if rule == "class-color" else "values"
        raise ValueError(
            f"{what} {', '.join(unknown)} are no class of the manifest's classes "
            f"({', '.join(spec.names)}): the mask changed after 'segbalance prepare'; run "
            "prepare again"
        )
    return labels
