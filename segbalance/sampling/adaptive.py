"""Adaptive group weights: the Group DRO update and its mix with the base plan (pure numpy).

After each epoch the weights q move towards the groups that do worst (Sagawa et al.,
"Distributionally Robust Neural Networks", ICLR 2020: exponentiated gradient ascent on
the group losses)::

    q_g <- q_g * exp(eta * L_g) / sum_h q_h * exp(eta * L_h)

and the next epoch samples from the base plan mixed with q, kept inside two bounds::

    p_g = clip(t * ((1 - lambda) * base_g + lambda * q_g), floor, cap * n_g / E)

with the one t that makes p sum to 1. ``floor`` keeps every group in every epoch (a group
the model has learned is not forgotten); ``cap`` bounds the mean showings of one image per
epoch (p_g * E / n_g), because a 34-image group shown 30 times an epoch over-fits.

These are pure functions of their inputs, so every worker that feeds them the same
(all-reduced) losses holds the same q and p, bit for bit.

Example:
    >>> q = update_weights(np.array([0.5, 0.5]), np.array([0.0, np.log(3.0)]), eta=1.0)
    >>> q.round(6).tolist()
    [0.25, 0.75]
"""

from __future__ import annotations

import numpy as np

__all__ = ["adjusted_losses", "initial_weights", "mix", "update_weights"]


def initial_weights(base: np.ndarray) -> np.ndarray:
    """q before the first update: uniform over the groups the base plan samples.

    Example:
        >>> initial_weights(np.array([0.7, 0.0, 0.3])).tolist()
        [0.5, 0.0, 0.5]
    """
    active = np.asarray(base, np.float64) > 0
    return active / active.sum()


def adjusted_losses(losses: np.ndarray, sizes: np.ndarray, c: float) -> np.ndarray:
    """``L_g + c / sqrt(n_g)``: Group DRO's generalization adjustment (Sagawa et al. 2020).

    A small group's validation signal flatters it: its few images are easy to fit and its
    measured loss is noisy, so without the adjustment an easy-looking small group sinks to
    the floor and does worse on new data than under uniform. ``c / sqrt(n)`` is the usual
    size of that generalisation gap. NaN (no signal) stays NaN; a group without images
    gets no adjustment (it is not sampled).

    Example:
        >>> adjusted_losses(np.array([0.1, 0.1, np.nan]), np.array([100, 4, 9]), 1.0).tolist()
        [0.2, 0.6, nan]
    """
    n = np.asarray(sizes, np.float64)
    bonus = np.where(n > 0, c / np.sqrt(np.maximum(n, 1.0)), 0.0)
    return np.asarray(losses, np.float64) + bonus


def update_weights(q: np.ndarray, losses: np.ndarray, eta: float) -> np.ndarray:
    """One exponentiated-gradient step: ``q * exp(eta * L)``, normalised.

    Args:
        q: current weights (sum 1; 0 stays 0).
        losses: the signal per group; NaN (a group with no validation images) counts as
            the mean of the others, so a group without a signal neither gains nor loses.
        eta: step size (0: q does not move).
    """
    q = np.asarray(q, np.float64)
    losses = np.asarray(losses, np.float64)
    known = np.isfinite(losses) & (q > 0)
    if not known.any():
        return q.copy()
    filled = np.where(np.isfinite(losses), losses, losses[known].mean())
    step = eta * filled
    # Subtracting the largest exponent changes nothing after normalising and cannot overflow.
    w = q * np.exp(step - step[q > 0].max())
    return w / w.sum()


def mix(
    base: np.ndarray,
    q: np.ndarray,
    lam: float,
    floor: float,
    cap: float,
    sizes: np.ndarray,
    epoch_length: int,
) -> np.ndarray:
    """The next epoch's mix: ``(1 - lam) * base + lam * q`` inside the floor and the cap.

    Args:
        base: the base plan's probabilities; groups with 0 there (left out by the user, or
            without images) stay at 0.
        q: the adapted weights.
        lam: share of q in the mix, 0..1.
        floor: least probability of a sampled group (lowered to 1/groups if larger).
        cap: most mean showings of one image per epoch; a group's probability is at most
            ``cap * n_g / epoch_length``. A cap too low to fill the epoch even with every
            group at its cap gives the natural proportions (fewest repeats possible).
        sizes: images per group, n_g.
        epoch_length: samples per epoch, E.

    Example:
        >>> mix(np.array([0.5, 0.5]), np.array([0.1, 0.9]), 0.5, 0.0, 10, np.array([9, 9]), 9)
        array([0.3, 0.7])
    """
    base, q = np.asarray(base, np.float64), np.asarray(q, np.float64)
    n = np.asarray(sizes, np.float64)
    active = (base > 0) & (n > 0)
    want = np.where(active, (1.0 - lam) * base + lam * q, 0.0)
    hi = np.where(active, cap * n / epoch_length, 0.0)
    if hi.sum() <= 1.0:
        return hi / hi.sum()
    lo = np.minimum(np.where(active, min(floor, 1.0 / active.sum()), 0.0), hi)
    if not (want > 0).any():
        want = active.astype(np.float64)
    return _clipped_scale(want, lo, hi)


def _clipped_scale(want: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``clip(t * want, lo, hi)`` with the t that makes it sum to 1 (sum lo <= 1 <= sum hi).

    ``S(t) = sum clip(t * want, lo, hi)`` is piecewise linear and non-decreasing with
    breakpoints ``lo / want`` and ``hi / want``: find the piece holding 1 and solve it.
    A group with want 0 sits at its floor.
    """
    pos = want > 0

    def total(t: float) -> float:
        return float(np.where(pos, np.clip(t * want, lo, hi), lo).sum())

    with np.errstate(divide="ignore"):
        points = np.unique(np.concatenate([lo[pos] / want[pos], hi[pos] / want[pos]]))
    prev, s_prev = 0.0, total(0.0)
    t = float(points[-1])
    for point in points:
        s = total(float(point))
        if s >= 1.0:
            # Linear between prev and point: S(prev) + slope * (t - prev) = 1.
            slope = (s - s_prev) / (point - prev) if point > prev else 0.0
            t = float(point) if slope <= 0 else prev + (1.0 - s_prev) / slope
            break
        prev, s_prev = float(point), s
    p = np.where(pos, np.clip(t * want, lo, hi), lo)
    return p / p.sum()
