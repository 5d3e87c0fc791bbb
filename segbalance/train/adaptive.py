"""Adaptive balancing in a run (``sampling.balance: adaptive[:BASE]``): the trainer's hook.

Epoch 1 samples the base plan (what ``segbalance plan`` shows). After each epoch's
validation the hook takes each group's signal L_g (``sampling.adaptive_signal``: the
group's mean validation loss, 1 - its validation IoU, or its mean train loss over the
epoch's samples), updates q (:func:`~segbalance.sampling.
adaptive.update_weights`), mixes the next epoch's p with the base plan inside the floor and
the cap (:func:`~segbalance.sampling.adaptive.mix`) and gives it to the plan
(:meth:`~segbalance.sampling.plan.SamplingPlan.set_target`).

Resume stays exact: q and every decided p_e live in the checkpointed
:class:`~segbalance.train.checkpoint.RunState` (``group_q``, ``group_p``), written in the
same checkpoint as the epoch counter, and :meth:`AdaptiveBalance.begin` gives the restored
p_e back to the plan, so epoch e's indices (and each group's stream cursor, the sum of the
earlier epochs' quotas) are those of the uninterrupted run. The signal comes from
validation sums reduced over replicas and workers (:func:`segbalance.train.steps.validate`),
so every worker computes the same q and p and reads exactly its shard of the same epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from segbalance.config import SamplingConfig
from segbalance.io import atomic_path
from segbalance.sampling import SamplingPlan, adaptive_base
from segbalance.sampling.adaptive import adjusted_losses, initial_weights, mix, update_weights
from segbalance.train.checkpoint import RunState
from segbalance.train.workdir import ADAPTIVE_FIGURE

__all__ = ["FIGURE", "AdaptiveBalance", "plot_weights"]

# The figure an adaptive run writes into its work dir.
FIGURE = ADAPTIVE_FIGURE


class AdaptiveBalance:
    """q, p and their updates for one run (every worker holds one; all compute the same).

    Args:
        cfg: the run's sampling config (``balance`` adaptive).
        plan: the run's plan; its own mix is the base.
        epochs: epochs of the run (rows of ``RunState.group_p``).
    """

    def __init__(self, cfg: SamplingConfig, plan: SamplingPlan, epochs: int) -> None:
        self.cfg, self.epochs = cfg, epochs
        self.groups = list(plan.group_names)
        self.base = np.array([plan.target[g] for g in self.groups])
        self.sizes = np.array([plan.sizes[g] for g in self.groups], np.int64)
        self.epoch_length = plan.epoch_length
        active = int(((self.base > 0) & (self.sizes > 0)).sum())
        # adaptive_floor is a share of a uniform share, so it means the same for 3 or 300 groups.
        self.floor = cfg.adaptive_floor / max(active, 1)

    @staticmethod
    def for_run(cfg: SamplingConfig, plan: SamplingPlan, epochs: int) -> AdaptiveBalance | None:
        """The hook of an adaptive run; None for a static balance."""
        return None if adaptive_base(cfg.balance) is None else AdaptiveBalance(cfg, plan, epochs)

    def begin(self, state: RunState, plan: SamplingPlan) -> None:
        """A fresh run records q_0 and p_0 (the base); a resumed one gives the plan its p_e."""
        p = np.array(state.get("group_p"), np.float64).reshape(self.epochs, len(self.groups))
        if not np.isfinite(p[0]).all():
            p[0] = self.base
            state.set(group_q=initial_weights(self.base), group_p=p)
        # Epoch 0 keeps the plan's own mix: exactly the base plan `segbalance plan` shows.
        for e in range(1, self.epochs):
            if np.isfinite(p[e]).all():
                plan.set_target(e, p[e])

    @property
    def train_loss_groups(self) -> int:
        """Groups whose train losses the train step sums (0: the signal is validation's)."""
        return len(self.groups) if self.cfg.adaptive_signal == "train_loss" else 0

    def add_train_loss(self, state: RunState, sums: np.ndarray) -> None:
        """Add one step's per-group train loss sums (reduced over replicas and workers).

        Kept in the state, so a mid-epoch checkpoint holds the sums of the steps it covers.
        """
        state.set(run_group_loss=np.asarray(state.get("run_group_loss")) + sums)

    def signal(
        self, epoch: int, val: Mapping[str, Any], plan: SamplingPlan, train_sums: np.ndarray
    ) -> np.ndarray:
        """L_g of epoch ``epoch`` (NaN for a group without validation images or samples).

        Args:
            train_sums: the epoch's per-group train loss sums (``train_loss`` signal).
        """
        if self.cfg.adaptive_signal == "valid_iou":
            ious = [val["groups"][g]["iou"] for g in self.groups]
            return np.array([np.nan if x is None else 1.0 - float(x) for x in ious])
        if self.cfg.adaptive_signal == "train_loss":
            seen = np.array(list(plan.counts(epoch).values()), np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(seen > 0, np.asarray(train_sums, np.float64) / seen, np.nan)
        return np.array([float(val["group_loss"][g]) for g in self.groups])

    def end_epoch(
        self, epoch: int, val: Mapping[str, Any], state: RunState, plan: SamplingPlan
    ) -> None:
        """Update q from epoch ``epoch``'s validation and decide the next epoch's p."""
        cfg = self.cfg
        losses = self.signal(epoch, val, plan, np.asarray(state.get("run_group_loss")))
        losses = adjusted_losses(losses, self.sizes, cfg.adaptive_adjustment)
        q = update_weights(np.asarray(state.get("group_q")), losses, cfg.adaptive_eta)
        state.set(group_q=q, run_group_loss=np.zeros(len(self.groups)))
        if epoch + 1 >= self.epochs:
            return  # the final q is reported; there is no next epoch to mix for
        p_next = mix(
            self.base,
            q,
            cfg.adaptive_mix,
            self.floor,
            cfg.adaptive_cap,
            self.sizes,
            self.epoch_length,
        )
        p = np.array(state.get("group_p"), np.float64).reshape(self.epochs, len(self.groups))
        p[epoch + 1] = p_next
        state.set(group_p=p)
        plan.set_target(epoch + 1, p_next)

    def row(self, epoch: int, val: Mapping[str, Any], plan: SamplingPlan) -> dict[str, float]:
        """History columns of epoch ``epoch``: the mix it sampled and each group's val loss."""
        used = plan.target_of(epoch)
        out = {f"weight_{g}": used[g] for g in self.groups}
        out.update({f"val_loss_{g}": float(val["group_loss"][g]) for g in self.groups})
        return out

    def facts(self, state: RunState, figure: Path | None = None) -> dict[str, Any]:
        """metrics.json's ``adaptive`` entry: the settings and the final q.

        Args:
            figure: where the figure of the run's weights and IoUs goes (None: none).
        """
        cfg = self.cfg
        q = np.asarray(state.get("group_q"), np.float64)
        return {
            "figure": None if figure is None else figure.name,
            "signal": cfg.adaptive_signal,
            "eta": cfg.adaptive_eta,
            "mix": cfg.adaptive_mix,
            "floor": cfg.adaptive_floor,
            "cap": cfg.adaptive_cap,
            "adjustment": cfg.adaptive_adjustment,
            "final_q": dict(zip(self.groups, q.tolist(), strict=True)),
        }

    def describe(self) -> str:
        """One header line."""
        cfg = self.cfg
        return (
            f"adaptive: epoch 1 samples the base mix, later epochs adapt to {cfg.adaptive_signal} "
            f"(eta {cfg.adaptive_eta:g}, mix {cfg.adaptive_mix:g}, floor {cfg.adaptive_floor:g}"
            f"/groups, cap {cfg.adaptive_cap:g} showings per image per epoch, adjustment "
            f"{cfg.adaptive_adjustment:g}/sqrt(n))"
        )


def plot_weights(rows: Sequence[Mapping[str, Any]], groups: Sequence[str], path: Path) -> Path:
    """Each group's sampling weight per epoch beside its validation IoU; written atomically.

    Args:
        rows: history rows with ``weight_<g>`` and ``iou_<g>`` (epochs from 1).
    """
    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # a bare Agg figure: no pyplot state, no display
    left, right = fig.subplots(1, 2, sharex=True)
    epochs = [int(r["epoch"]) for r in rows]

    def column(name: str) -> list[float]:
        values = [r.get(name) for r in rows]
        return [float(v) if isinstance(v, int | float) else math.nan for v in values]

    for g in groups:
        (line,) = left.plot(epochs, column(f"weight_{g}"), marker="o", label=str(g))
        right.plot(epochs, column(f"iou_{g}"), marker="o", color=line.get_color())
    left.set(title="sampling weight p_e per group", xlabel="epoch", ylabel="probability")
    right.set(title="validation IoU per group", xlabel="epoch", ylabel="IoU")
    left.legend(title="group", fontsize=8, ncols=max(1, len(groups) // 12))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
