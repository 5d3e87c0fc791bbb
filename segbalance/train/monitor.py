"""The monitored value across epochs: best score, reduce-on-plateau, early stopping.

Every counter lives in the checkpointed :class:`~segbalance.train.checkpoint.RunState`
(not in a callback's Python attributes), so a resumed run makes the same decisions as an
uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from segbalance.config import Config
from segbalance.train import schedule
from segbalance.train.checkpoint import RunState
from segbalance.train.logs import monitor_column


class Monitor:
    """Judges each epoch's history row by ``train.monitor``.

    Args:
        cfg: the run's config (monitor, schedule, early stopping).
        state: the run's counters (updated in place).
        say: prints a line (the chief's console).
        selection: a selection split picks the best epoch: its column is judged.
    """

    def __init__(
        self, cfg: Config, state: RunState, say: Callable[[str], None], selection: bool = False
    ) -> None:
        self.cfg, self.state, self.say = cfg, state, say
        self.column, self.mode = monitor_column(cfg.train.monitor, selection)

    def improved(self, epoch: int, row: Mapping[str, Any]) -> bool:
        """Record the epoch's value; True when it beats the best so far (NaN never does)."""
        value, best = float(row[self.column]), self.state.get("best")
        if not math.isfinite(value):
            better = False
        else:
            better = math.isnan(best) or (value > best if self.mode == "max" else value < best)
        if better:
            self.state.set(best=value, best_epoch=epoch + 1, bad_epochs=0)
        else:
            self.state.set(bad_epochs=self.state.get("bad_epochs") + 1)
        return better

    def should_stop(self, row: Mapping[str, Any]) -> bool:
        """Reduce-on-plateau bookkeeping; True when early stopping ends the run."""
        cfg, state = self.cfg, self.state
        value = float(row[self.column])
        if cfg.optimizer.schedule == "plateau" and math.isfinite(value):
            best = state.get("plateau_best")
            plateau = schedule.Plateau(
                cfg.optimizer.plateau_factor,
                cfg.optimizer.plateau_patience,
                cfg.optimizer.min_lr,
                self.mode,
                None if math.isnan(best) else best,
                state.get("plateau_wait"),
            )
            lr = plateau.step(value, state.get("lr"))
            if lr < state.get("lr"):
                self.say(f"reduce on plateau: lr {state.get('lr'):.2e} -> {lr:.2e}")
            state.set(plateau_best=plateau.best, plateau_wait=plateau.wait, lr=lr)
        patience = cfg.train.early_stopping_patience
        return patience is not None and state.get("bad_epochs") >= patience
