"""Balancing strategies: per-group image counts -> per-group sampling probabilities.

A strategy gives each group a base weight; optional user weights multiply it; the
probabilities are the weights normalised to sum to 1.

=====================  =====================================================================
``proportional``       p_g ∝ n_g (no balancing: every image equally likely)
``uniform``            p_g ∝ 1 (every non-empty group equally likely; the tutorial's choice)
``power:ALPHA``        p_g ∝ n_g ** ALPHA, 0 <= ALPHA <= 1 (0 = uniform, 1 = proportional)
``sqrt``               ``power:0.5``
``custom``             p_g ∝ w_g, the weights given (groups not named keep weight 1)
``repeat-factor:T``    LVIS: p_g ∝ n_g * r_g, r_g = max(1, sqrt(T / f_g)), f_g = n_g / N, 0 < T <= 1
``adaptive[:BASE]``    BASE (default proportional) for the first epoch, then adapted to the
                       groups' losses during training (:mod:`segbalance.sampling.adaptive`)
=====================  =====================================================================

Here (and so in ``segbalance plan``) ``adaptive:BASE`` means the probabilities of BASE: the
later epochs' weights depend on training and are recorded by the run.

User weights (``--weights 0=1,4=2`` or ``sampling.weights`` in the config) are multipliers
on top of any strategy: a group not named keeps multiplier 1, so ``uniform`` with ``4=2``
makes group 4 twice as likely as each other group. ``custom`` is the same rule on a base of
1, and requires weights. A weight of 0 leaves the group out, with a :class:`SamplingWarning`;
a group with no images cannot be sampled and is left out with a warning too.

Example:
    >>> group_probabilities({"a": 30, "b": 10}, "uniform")
    {'a': 0.5, 'b': 0.5}
    >>> group_probabilities({"a": 30, "b": 10}, "uniform", parse_weights("b=3"))
    {'a': 0.25, 'b': 0.75}
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np

from segbalance.errors import UserError, unknown_name_error

__all__ = [
    "ADAPTIVE_DEFAULT_BASE",
    "STRATEGIES",
    "SamplingWarning",
    "adaptive_base",
    "group_probabilities",
    "parse_balance",
    "parse_weights",
]

# Names as the user writes them; a value after ':' is the strategy's parameter.
STRATEGIES = (
    "proportional",
    "uniform",
    "power:ALPHA",
    "sqrt",
    "custom",
    "repeat-factor:T",
    "adaptive:BASE",
)
# The base plan of a bare ``adaptive``: the natural shares. With adaptive_mix 0.36 every
# group keeps 64 % of its natural share and the rest of the samples chase the worst groups,
# so the largest group is not starved. Measured (README, "Measured figures"): a uniform
# base lifted the worst group as much, within noise, at three times the cost to the largest
# group (-0.071 vs -0.024 IoU against proportional, five seeds).
ADAPTIVE_DEFAULT_BASE = "proportional"


class SamplingWarning(UserWarning):
    """A group is left out of sampling, or its images repeat so often that it may over-fit."""


def _parameter(name: str, text: str, low: float, high: float, low_open: bool) -> float:
    """Parse the number after ``name:`` and check it lies in its range."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    inside = (low < value if low_open else low <= value) and value <= high
    if not (math.isfinite(value) and inside):
        bracket = "(" if low_open else "["
        raise UserError(
            f"balance '{name}:{text}': the value must be a number in {bracket}{low:g}, {high:g}], "
            f"e.g. '{name}:{0.5 if name == 'power' else 0.001}'"
        )
    return value


def adaptive_base(balance: str) -> str | None:
    """The base strategy of ``adaptive[:BASE]`` (checked), or None for a static strategy.

    Example:
        >>> adaptive_base("adaptive"), adaptive_base("adaptive:sqrt"), adaptive_base("sqrt")
        ('proportional', 'sqrt', None)
    """
    text = balance.strip()
    name, _, base = text.partition(":")
    if name.strip().lower() != "adaptive":
        return None
    base = base.strip() or ADAPTIVE_DEFAULT_BASE
    if adaptive_base(base) is not None:
        raise UserError(f"balance '{text}': the base of adaptive must be a static strategy")
    parse_balance(base)
    return base


def parse_balance(balance: str) -> tuple[str, float | None]:
    """Split and check a strategy name such as ``power:0.3``.

    Returns:
        (kind, parameter) with kind in proportional, uniform, power, custom, repeat-factor,
        adaptive (whose base is checked too, see :func:`adaptive_base`).

    Raises:
        UserError: unknown name (listing the valid ones) or a bad parameter.

    Example:
        >>> parse_balance("sqrt")
        ('power', 0.5)
    """
    text = balance.strip()
    name, _, param = text.partition(":")
    name = name.strip().lower()
    if name == "adaptive":
        adaptive_base(text)
        return name, None
    if name == "sqrt" and not param:
        return "power", 0.5
    if name in ("proportional", "uniform", "custom"):
        if param:
            raise UserError(f"balance '{text}': '{name}' takes no parameter; use '{name}'")
        return name, None
    if name in ("power", "repeat-factor"):
        if not param:
            example = "power:0.5" if name == "power" else "repeat-factor:0.001"
            raise UserError(f"balance '{text}' needs a parameter, e.g. '{example}'")
        if name == "power":
            return name, _parameter(name, param.strip(), 0.0, 1.0, low_open=False)
        return name, _parameter(name, param.strip(), 0.0, 1.0, low_open=True)
    raise unknown_name_error("balance strategy", text, STRATEGIES)


def parse_weights(text: str) -> dict[str, float]:
    """Parse ``"0=1,4=2"`` into ``{"0": 1.0, "4": 2.0}``.

    Group names may not contain commas; the last ``=`` splits name and value.

    Raises:
        UserError: a malformed entry, a repeated group, or a value that is not a finite,
            non-negative number.

    Example:
        >>> parse_weights(" 0=1, big group=0.5 ")
        {'0': 1.0, 'big group': 0.5}
    """
    out: dict[str, float] = {}
    entries = [part.strip() for part in text.split(",")]
    if not any(entries):
        raise UserError("--weights is empty; write GROUP=WEIGHT pairs such as '0=1,4=2'")
    for entry in entries:
        name, sep, value = entry.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--weights entry '{entry}' must look like GROUP=WEIGHT, e.g. '4=2'")
        if name in out:
            raise UserError(f"--weights names group '{name}' twice; give each group once")
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"--weights entry '{entry}': '{value}' is not a number") from None
        _check_weight(name, out[name])
    return out


def _check_weight(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise UserError(
            f"weight of group '{name}' is {value}; weights must be finite numbers >= 0 "
            "(0 leaves the group out)"
        )


def _base_weights(kind: str, param: float | None, n: np.ndarray) -> np.ndarray:
    """Unnormalised weight per group from the strategy alone (0 for empty groups)."""
    total = float(n.sum())
    rules: dict[str, Callable[[], np.ndarray]] = {
        "proportional": lambda: n.astype(np.float64),
        "uniform": lambda: np.ones(len(n)),
        "custom": lambda: np.ones(len(n)),
        "power": lambda: n.astype(np.float64) ** float(param or 0.0),
        "repeat-factor": lambda: n * np.maximum(1.0, np.sqrt(float(param or 0) * total / n)),
    }
    with np.errstate(divide="ignore", invalid="ignore"):
        base = rules[kind]()
    return np.where(n > 0, base, 0.0)


def group_probabilities(
    counts: Mapping[str, int], balance: str, weights: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Sampling probability of each group.

    Args:
        counts: images per group, in group order (groups with 0 images are left out).
        balance: strategy name, see the module docstring.
        weights: optional per-group multipliers (``custom`` requires them); unnamed
            groups keep 1.

    Returns:
        Every group of ``counts``, in order, with its probability (0.0 when left out).

    Raises:
        UserError: bad strategy, weights for unknown groups, negative/NaN weights, or no
            group left to sample.

    Example:
        >>> group_probabilities({"a": 1, "b": 4}, "power:0.5")
        {'a': 0.3333333333333333, 'b': 0.6666666666666666}
    """
    names = list(counts)
    n = np.array([int(counts[g]) for g in names], dtype=np.int64)
    if not names:
        raise UserError("no groups to sample from: the data has no rows")
    if (n < 0).any():
        raise UserError(f"image counts must be >= 0, got {dict(counts)}")
    base = adaptive_base(balance)
    if base is not None:  # the first epoch's mix; later ones adapt during training
        return group_probabilities(counts, base, weights)
    kind, param = parse_balance(balance)
    if kind == "custom" and not weights:
        raise UserError(
            "balance 'custom' needs weights: pass --weights GROUP=WEIGHT,... (e.g. '0=1,4=2') "
            "or set sampling.weights in the config"
        )
    mult = np.ones(len(names))
    for name, value in (weights or {}).items():
        if name not in counts:
            raise UserError(
                f"weights name group '{name}', which does not exist; valid groups: "
                + ", ".join(names)
            )
        _check_weight(name, float(value))
        mult[names.index(name)] = float(value)
    w = _base_weights(kind, param, n) * mult
    _warn_left_out(names, n, mult)
    if not w.sum() > 0:
        sizes = dict(zip(names, n.tolist(), strict=True))
        raise UserError(
            f"balance '{balance}' with weights {dict(weights or {})} leaves no group to sample: "
            f"every group has weight 0 or no images (images per group: {sizes})"
        )
    p = w / w.sum()
    return {g: float(v) for g, v in zip(names, p, strict=True)}


def _warn_left_out(names: list[str], n: np.ndarray, mult: np.ndarray) -> None:
    empty = [g for g, c in zip(names, n, strict=True) if c == 0]
    zero = [g for g, c, m in zip(names, n, mult, strict=True) if c > 0 and m == 0]
    for groups, why in ((empty, "have no images"), (zero, "have weight 0")):
        if groups:
            shown = ", ".join(groups[:20]) + (" ..." if len(groups) > 20 else "")
            warnings.warn(
                f"{len(groups)} group(s) {why} and are left out of sampling: {shown}",
                SamplingWarning,
                stacklevel=3,
            )
