"""The realised-mix report of a SamplingPlan and each replica's positions in an epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from segbalance.errors import UserError

__all__ = ["REPEAT_WARNING", "PlanFacts", "plan_report", "shard_positions"]

# Showing each image of a group more than this many times per epoch risks over-fitting it.
REPEAT_WARNING = 10.0


def shard_positions(
    epoch_length: int, global_batch_size: int, num_replicas: int, replica_id: int
) -> np.ndarray:
    """Global positions replica r reads in an epoch of ``epoch_length`` positions.

    Inside each global batch of B positions replica r reads
    ``np.array_split(batch_positions, R)[r]``, so the replicas together read every
    position once and each global batch keeps the planned mix.

    Example:
        >>> shard_positions(4, 4, 2, 1).tolist()
        [2, 3]
    """
    B, R, r = global_batch_size, num_replicas, replica_id
    if not (isinstance(B, int | np.integer) and isinstance(R, int | np.integer) and B >= 1):
        raise UserError(f"global batch size must be an integer >= 1, got {B!r}")
    if not (1 <= R <= B):
        raise UserError(f"number of replicas must lie in 1..batch size {B}, got {R}")
    if not (isinstance(r, int | np.integer) and 0 <= r < R):
        raise UserError(f"replica id must lie in 0..{R - 1}, got {r!r}")
    E = epoch_length
    full = E // B
    parts = [_replica_slots(np.arange(full, dtype=np.int64) * B, B, R, r)]
    if E % B:
        parts.append(_replica_slots(np.array([full * B]), E % B, R, r))
    return np.concatenate(parts)


def _replica_slots(starts: np.ndarray, size: int, R: int, r: int) -> np.ndarray:
    """Positions of replica r in batches of ``size`` starting at ``starts`` (array_split)."""
    width = size // R + (1 if r < size % R else 0)
    offset = r * (size // R) + min(r, size % R)
    return (starts[:, None] + offset + np.arange(width)).ravel()


class PlanFacts(Protocol):
    """What the report reads of a plan (a :class:`~segbalance.sampling.SamplingPlan`)."""

    group_names: list[str]
    sizes: dict[str, int]
    target: dict[str, float]
    quotas: dict[str, int]
    balance: str
    weights: dict[str, float]
    mode: str
    seed: int
    epoch_length: int
    num_rows: int

    def counts(self, e: int) -> dict[str, int]: ...


def plan_report(plan: PlanFacts, epochs: int | Sequence[int]) -> dict[str, Any]:
    """The realised mix of the given epochs of ``plan`` (an int n means epochs 0..n-1).

    Per group: images, target probability, samples per epoch, mean showings of each
    image per epoch and ``repeat_warning`` when that exceeds :data:`REPEAT_WARNING`.
    """
    which = range(epochs) if isinstance(epochs, int | np.integer) else list(epochs)
    per_epoch = [(int(e), plan.counts(e)) for e in which]
    groups = []
    for g in plan.group_names:
        n = int(plan.sizes[g])
        expected = (
            float(plan.quotas[g])
            if plan.mode == "exact"
            else float(plan.target[g] * plan.epoch_length)
        )
        showings = expected / n if n else 0.0
        groups.append(
            {
                "name": g,
                "images": n,
                "target": plan.target[g],
                "samples_per_epoch": expected,
                "showings_per_image": showings,
                "repeat_warning": showings > REPEAT_WARNING,
            }
        )
    return {
        "balance": plan.balance,
        "weights": dict(plan.weights),
        "mode": plan.mode,
        "seed": plan.seed,
        "epoch_length": plan.epoch_length,
        "rows": plan.num_rows,
        "groups": groups,
        "target": dict(plan.target),
        "quotas": dict(plan.quotas),
        "epochs": [{"epoch": e, "counts": counts} for e, counts in per_epoch],
        "warnings": [
            f"group '{x['name']}': each image is shown {x['showings_per_image']:.1f}x per "
            "epoch on average and may over-fit; lower its weight or try power:ALPHA"
            for x in groups
            if x["repeat_warning"]
        ],
    }
