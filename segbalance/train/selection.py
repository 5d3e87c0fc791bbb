"""Validation passes of a run, and the split that picks its best epoch.

Every epoch the trainer validates on the valid rows (history columns, TensorBoard, and
the signal of an adaptive balance). When the manifest has a selection split (``prepare
--selection-fraction``, ``data.selection_split: auto``), a second pass over those rows
adds the ``select_*`` columns and the best epoch (``best.keras``, early stopping, reduce
on plateau, ``metrics.json``'s ``best_*``) is judged on them: with ``--balance adaptive``
the valid rows steer the group weights, and choosing the epoch on the same images would
make the valid numbers of the kept model look better than they are (the two decisions
would share one noise draw). Without adaptive weights the selection split leaves the valid
numbers of the best epoch an unbiased estimate.

Example:
    >>> check = ValidationPass(strategy, rows, options)  # doctest: +SKIP
    >>> check.run(model, loss_fn)["worst_group_iou"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from segbalance.config import Config
from segbalance.data.manifest import Manifest
from segbalance.train import steps
from segbalance.train.runtime import Runtime


@dataclass(frozen=True)
class PassOptions:
    """What every validation pass of a run shares.

    Attributes:
        image_size: the model's input size.
        batch: the global validation batch.
        worker: (this worker's index, number of workers).
        groups: the run's groups (the train rows' group list).
        threshold: binary probability threshold.
        jit: compile each replica's step with XLA.
        class_names: the classes of a multiclass run; None for binary.
        cache: keep the decoded rows in memory after the first pass.
    """

    image_size: Sequence[int]
    batch: int
    worker: tuple[int, int]
    groups: Sequence[str]
    threshold: float
    jit: bool
    class_names: Sequence[str] | None
    cache: bool

    @classmethod
    def for_run(
        cls,
        cfg: Config,
        runtime: Runtime,
        groups: Sequence[str],
        flags: tuple[bool, bool],
        class_names: Sequence[str] | None,
    ) -> PassOptions:
        """The options of a run; ``flags``: (XLA, cache the decoded rows)."""
        jit, cache = flags
        return cls(
            cfg.data.image_size,
            cfg.train.validation_batch_size or cfg.train.batch_size,
            (runtime.worker_index, runtime.num_workers),
            groups,
            cfg.train.threshold,
            jit,
            class_names,
            cache,
        )


class ValidationPass:
    """One set of rows validated once per epoch with a compiled step.

    The dataset is built at once; the step on the first :meth:`run` (the model must
    exist by then).
    """

    def __init__(self, strategy: tf.distribute.Strategy, rows: Manifest, opts: PassOptions):
        self.strategy, self.rows, self.opts = strategy, rows, opts
        self.dataset, self.steps, self.real = steps.eval_dataset(
            strategy, rows, opts.image_size, opts.batch, opts.worker, cache=opts.cache
        )
        self._step: Any = None

    def run(self, model: Any, loss_fn: Any) -> dict[str, Any]:
        """Loss, IoU and per-group results of the rows (:func:`steps.validate`)."""
        opts = self.opts
        if self._step is None:
            self._step = steps.make_eval_step(
                self.strategy,
                model,
                loss_fn,
                len(opts.groups),
                opts.threshold,
                self.real,
                jit_compile=opts.jit,
                multiclass=opts.class_names is not None,
            )
        return steps.validate(self._step, self.dataset, self.steps, opts.groups, opts.class_names)


def validation_passes(
    strategy: tf.distribute.Strategy, valid: Manifest, select: Manifest | None, opts: PassOptions
) -> tuple[ValidationPass, ValidationPass | None]:
    """The valid rows' pass and, where a selection split picks the best epoch, its pass."""
    picker = None if select is None else ValidationPass(strategy, select, opts)
    return ValidationPass(strategy, valid, opts), picker


def describe_selection(select: Manifest | None, valid_split: str, adaptive: bool) -> str:
    """The header line saying which rows pick the best epoch, and why it matters."""
    if select is None:
        if adaptive:
            return (
                f"best epoch picked on the '{valid_split}' rows, which also steer the adaptive "
                "weights (prepare --selection-fraction keeps them apart)"
            )
        return f"best epoch picked on the '{valid_split}' rows"
    counts = ", ".join(f"{g}:{n}" for g, n in select.counts().items())
    return f"best epoch picked on the '{select.split[0]}' split ({len(select)} images: {counts})"
