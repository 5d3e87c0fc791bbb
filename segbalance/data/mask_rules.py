"""Mask rules: the rule a mask is read by, from its pixels and the user's choice.

Rule names and planes are :mod:`segbalance.data.mask_planes` (re-exported here): ``<plane>>T``
is foreground where the plane is above T; the legacy names ``0/255``, ``0/1``,
``palette-nonblack`` and ``rgb-nonblack`` all mean ``any>0``.

Accepted silently (unambiguous): gray with exactly {0, 255} / {0, 65535} -> ``0/255``, {0, 1}
-> ``0/1``, one value; 1-bit; RGB(A) whose pixels are black or one colour ->
``rgb-nonblack``; a palette drawing black at its lowest index and one colour ->
``palette-nonblack``. Such a mask keeps its own rule whatever the user names. Everything
else is refused with a fix, or read by the user's rule (:class:`MaskChoice`:
``--mask-threshold``, ``--mask-channel``; a channel only for masks that have it), which is
refused in turn where it finds no foreground (or no background) in a mask that is not blank.

``--mask-rule labels`` (:data:`LABEL_RULES`) reads instance-label masks (0 background, 1..N
one id per object, 8- or 16-bit, as nuclei and cell data store them) as binary: every gray
mask by ``gray>0``, a colour one by ``any>0`` when black is its background. It reads every
mask so, also the unambiguous ones (same foreground), and refuses JPEG (ids move near edges).

Example:
    >>> decide_rule(mask_planes(Image.open("nuclei_16bit.png")), MaskChoice(labels=True))
    'gray>0'
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from segbalance.data.mask_planes import (
    CHANNELS,
    LEGACY_RULES,
    PLANES,
    PNG_FIX,
    MaskError,
    Planes,
    mask_planes,
    parse_rule,
    rule_name,
)

# The vocabulary is mask_planes'; re-exported: this is where callers look.
__all__ = ["CHANNELS", "LABEL_RULES", "LEGACY_RULES", "PLANES", "PNG_FIX", "SILENT_RULES"]
__all__ += ["MaskChoice", "MaskError", "Planes", "decide_rule", "mask_foreground"]
__all__ += ["mask_planes", "parse_rule", "rule_name"]


@dataclass(frozen=True)
class MaskChoice:
    """The user's rule: ``threshold`` (0..255 scale, values above are foreground), ``channel``,
    or ``labels`` (``--mask-rule labels``: instance ids, anything above 0 is foreground).

    Raises:
        ValueError: ``labels`` together with a threshold or a channel.
    """

    threshold: float | None = None
    channel: str | None = None
    labels: bool = False

    def __post_init__(self) -> None:
        if self.labels and (self.threshold is not None or self.channel is not None):
            raise ValueError("--mask-rule labels reads every mask as > 0: no threshold or channel")


SILENT_RULES = MaskChoice()  # no user rule: only unambiguous encodings are accepted
#: What ``prepare --mask-rule`` accepts: ``labels`` reads instance-label masks as > 0.
LABEL_RULES = ("labels",)


def _values_text(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:8])
    more = f", ... ({len(values)} distinct)" if len(values) > 8 else ""
    return "{" + shown + more + "}"


def _distinct(plane: np.ndarray) -> np.ndarray:
    # bincount is ~10x faster than np.unique on 8/16-bit data and gives the same set
    return np.flatnonzero(np.bincount(plane.ravel(), minlength=2))


def _gray_rule(gray: np.ndarray, top: int) -> str:
    """{0, top} -> 0/255, {0, 1} -> 0/1, one value -> by value; anything else refused."""
    values = _distinct(gray)
    if len(values) == 1:
        return "0/1" if int(values[0]) == 1 else "0/255"
    if len(values) == 2 and values[0] == 0 and values[1] in (1, top):
        return "0/1" if values[1] == 1 else "0/255"
    raise MaskError(
        f"mask is not binary: values {_values_text(values)}",
        "save the mask with only 0 and 255 as PNG, or pass --mask-threshold T (values above "
        "T are foreground) for an anti-aliased mask; instance ids (0 background): "
        "--mask-rule labels; class values: --classes FILE",
    )


def _colours(p: Planes, limit: int = 3) -> list[tuple[int, ...]]:
    """Up to ``limit`` distinct RGB colours, in packed 0xRRGGBB order (black first)."""
    packed = (p.rgb[..., 0].astype(np.uint32) << 16) | (p.rgb[..., 1].astype(np.uint32) << 8)
    packed = (packed | p.rgb[..., 2]).ravel()
    drawn = packed[packed != 0]
    if drawn.size == 0 or (drawn == drawn[0]).all():  # black and one colour: no sort needed
        found = [0] * (drawn.size < packed.size) + [int(v) for v in drawn[:1]]
    else:
        found = [int(v) for v in np.unique(packed)[:limit]]
    return [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in found]


def _varying_channels(p: Planes) -> str:
    names = [n for i, n in enumerate(PLANES[1:4]) if np.ptp(p.rgb[..., i]) > 0]
    return "|".join(names) or "red|green|blue"


def _alpha_only(p: Planes) -> None:
    """Refuse a mask drawn only in its alpha channel: colour planes flat, alpha not."""
    if p.alpha is not None and np.ptp(p.alpha) > 0 and np.ptp(p.plane("any")) == 0:
        raise MaskError(
            "the mask's foreground is only in its alpha channel (colour is flat)",
            "pass --mask-channel alpha (and --mask-threshold T if its edges are soft), "
            "or save the mask as 0/255 gray PNG",
        )


def _silent_rule(p: Planes) -> str:
    """The rule of an unambiguous encoding, or MaskError with the flag that reads it."""
    if p.lossy:
        raise MaskError(
            "JPEG mask: lossy compression moves values near edges, so no binary rule is safe",
            "pass --mask-threshold T (values above T are foreground, e.g. 127; 0.5 for 0/1 "
            "masks), or save the mask as PNG",
        )
    _alpha_only(p)
    if p.is_gray:
        rule = _gray_rule(p.plane("gray"), p.top)
    else:
        colours = _colours(p)
        if len(colours) > 2:
            raise MaskError(
                "colour mask is not binary: more than two colours (JPEG noise or "
                "anti-aliased edges)",
                "pass --mask-threshold T (brightest channel above T is foreground; add "
                f"--mask-channel {_varying_channels(p)} when the background is not black), "
                "or save it as 0/255 gray PNG",
            )
        if len(colours) == 2 and (0, 0, 0) not in colours:
            raise MaskError(
                f"colour mask has two colours {colours[0]} and {colours[1]}, neither black: "
                "which one is foreground is ambiguous",
                f"pass --mask-channel {_varying_channels(p)} (the channel higher in the "
                "foreground), or save it as 0/255 gray PNG",
            )
        rule = "rgb-nonblack" if p.indices is None else _palette_rule(p)
    if p.alpha is not None and np.ptp(p.alpha) > 0:
        disagree = int(np.count_nonzero((p.alpha > 0) != p.foreground(rule)))
        if disagree:
            raise MaskError(
                f"alpha channel and colour disagree on {disagree} pixel(s) of the foreground",
                "pass --mask-channel alpha or --mask-channel red|green|blue|gray to choose, "
                "or save the mask without alpha",
            )
    return rule


def _palette_rule(p: Planes) -> str:
    """Black must be the lowest index drawn (index 0 is background by convention)."""
    assert p.indices is not None and p.palette is not None
    used = _distinct(p.indices)
    first = tuple(int(v) for v in p.palette[used[0]]) if used[0] < len(p.palette) else (0, 0, 0)
    if len(used) > 1 and first != (0, 0, 0):
        raise MaskError(
            f"palette mask's background index {int(used[0])} is {first}, not black, and "
            "black is drawn at a higher index: background and foreground are ambiguous",
            "make the background palette entry black, or save the mask as 0/255 gray PNG",
        )
    return "palette-nonblack"


def _threshold_rule(p: Planes, threshold: float) -> str:
    _alpha_only(p)
    rule = rule_name("gray" if p.is_gray else "any", threshold)
    fg = p.foreground(rule)
    if not p.is_gray and fg.any():  # no foreground: refused by _refuse_blank
        # "brightest channel above T" assumes a black background; with a coloured one the
        # foreground it finds holds two colours: a channel high in some of it, low in the rest
        scale = np.float32(257.0 if p.top == 65535 else 1.0)
        high = (p.rgb[fg].astype(np.float32) / scale > np.float32(threshold)).mean(axis=0)
        split = [PLANES[1 + i] for i in range(3) if 0.05 < high[i] < 0.95]
        if fg.all() or split:
            raise MaskError(
                f"the pixels whose brightest channel is above {threshold} are of two colours "
                "(or are all pixels): the background is not black",
                f"add --mask-channel {'|'.join(split) or _varying_channels(p)} (the one high "
                "in the foreground only)",
            )
    return rule


def _channel_misfit(p: Planes, channel: str) -> str | None:
    """Why ``--mask-channel channel`` does not apply to this mask, or None when it does."""
    if channel == "alpha" and p.alpha is None:
        return f"mode {p.mode} has no alpha channel"
    if channel == "alpha" and not _flat(p.alpha):
        return None
    if channel == "alpha":
        return "its alpha channel is flat"
    if channel == "gray" and not p.is_gray:
        return "it is colour, not gray"
    return None


def _flat(plane: np.ndarray | None) -> bool:
    return plane is None or not (plane != plane[:1, :1]).any()  # per channel


def _drawn_planes(p: Planes) -> str:
    """The planes that vary in this mask: where its drawing is."""
    names = ["gray"] if p.is_gray and not _flat(p.rgb[..., 0]) else []
    if not p.is_gray:
        names = [PLANES[1 + i] for i in range(3) if not _flat(p.rgb[..., i])]
    return "|".join(names + ["alpha"] * (not _flat(p.alpha)))


def _channel_rule(p: Planes, channel: str, threshold: float | None) -> str:
    if threshold is None:
        values = _distinct(p.plane(channel))
        if p.lossy or len(values) > 2 or (p.top == 65535 and values[0] != 0 and len(values) == 2):
            raise MaskError(
                f"{channel} channel is not binary: values {_values_text(values)}"
                + (" (JPEG)" if p.lossy else ""),
                "add --mask-threshold T (values above T are foreground)",
            )
        threshold = float(values[0]) if len(values) == 2 else 0.0
    return rule_name(channel, threshold)


def _global_fix(fix: str, choice: MaskChoice) -> str:
    """``fix``, unless it names another channel than the one --mask-channel sets for all."""
    if choice.channel is None or "--mask-channel" not in fix:
        return fix
    threshold = choice.threshold is None and "--mask-threshold" in fix
    return (
        "save it as 0/255 gray PNG, which needs no rule"
        + (", or pass --mask-threshold T if its background is black" if threshold else "")
        + f" (--mask-channel {choice.channel} is one channel for every mask needing a rule)"
    )


def _refuse_blank(p: Planes, rule: str) -> None:
    """Refuse a rule finding no foreground (or no background) in a mask that is not blank."""
    fg = p.foreground(rule)
    if (fg.any() and not fg.all()) or (_flat(p.rgb) and _flat(p.alpha)):
        return
    plane, _ = parse_rule(rule)
    values = p.plane(plane)
    scale = 257.0 if p.top == 65535 else 1.0
    lo, hi = float(values.min()) / scale, float(values.max()) / scale
    found = "no foreground" if not fg.any() else "every pixel foreground (no background)"
    problem = f"{plane} values {lo:.4g}..{hi:.4g}: {rule} finds {found}, yet the mask is not blank"
    if hi > lo:
        move = f"below {hi:.4g} (e.g. {hi / 2:.4g})" if not fg.any() else f"to {lo:.4g} or more"
        fix = f"set --mask-threshold {move}: it is one value for every mask needing a rule"
    else:
        drawn = _drawn_planes(p)
        note = " (it applies only to masks whose alpha varies)" if "alpha" in drawn else ""
        fix = f"the drawing is in {drawn}: pass --mask-channel {drawn} instead{note}"
    raise MaskError(problem, f"{fix}, or save the mask as 0/255 gray PNG, which needs no rule")


def _user_rule(p: Planes, choice: MaskChoice, silent: MaskError) -> str:
    """The user's rule for a mask that needs one (``silent``: why it does)."""
    misfit = _channel_misfit(p, choice.channel) if choice.channel is not None else None
    try:
        if choice.channel is not None and misfit is None:
            rule = _channel_rule(p, choice.channel, choice.threshold)
        elif choice.threshold is not None:
            rule = _threshold_rule(p, choice.threshold)
        else:
            raise MaskError(
                f"{silent.problem} (--mask-channel {choice.channel} does not apply: {misfit})",
                silent.fix,
            )
    except MaskError as err:
        raise MaskError(err.problem, _global_fix(err.fix, choice)) from None
    _refuse_blank(p, rule)
    return rule


def _labels_rule(p: Planes) -> str:
    """``--mask-rule labels``: 0 (black) is background, any other id or colour foreground."""
    if p.lossy:
        raise MaskError(
            "JPEG label mask: lossy compression moves the ids near edges, so background "
            "pixels there read as objects",
            PNG_FIX,
        )
    if p.is_gray:
        return rule_name("gray", 0.0)
    if not (p.plane("any") == 0).any() and len(_colours(p, limit=2)) > 1:
        raise MaskError(
            "colour label mask without black: which colour is background is unknown",
            "save the ids as a gray 8- or 16-bit PNG with 0 for background, or paint the "
            "background black",
        )
    return rule_name("any", 0.0)


def decide_rule(p: Planes, choice: MaskChoice = SILENT_RULES) -> str:
    """The rule reading this mask's foreground, from its planes and the user's choice.

    An unambiguous encoding keeps its own (silent) rule whatever the choice; the choice reads
    only masks that need a rule, its channel only masks that have that channel.

    Raises:
        MaskError: ambiguous or unreadable, with the fix (often the flag that reads it); or
            the user's rule finds no foreground (or no background) in a mask that is not blank.
    """
    if choice.labels:
        return _labels_rule(p)
    try:
        return _silent_rule(p)
    except MaskError as silent:
        if choice.threshold is None and choice.channel is None:
            raise
        return _user_rule(p, choice, silent)


def mask_foreground(img: Image.Image, choice: MaskChoice = SILENT_RULES) -> tuple[np.ndarray, str]:
    """Foreground (bool HxW) and the rule name of a decoded mask.

    Raises:
        MaskError: see :func:`decide_rule`.
    """
    planes = mask_planes(img)
    if img.format == "JPEG":
        planes = replace(planes, lossy=True)
    rule = decide_rule(planes, choice)
    return planes.foreground(rule), rule
