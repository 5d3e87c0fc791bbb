"""What a checkpoint holds (model, optimiser, seed generators, loop counters) and its files.

Checkpoints are written by TensorFlow as data files first and the ``checkpoint`` index
last, so a run killed while saving resumes from the previous complete checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from segbalance.errors import UserError
from segbalance.train.runtime import Runtime


class RunState:
    """Loop counters kept in every checkpoint, as variables (create under strategy.scope()).

    Attributes:
        epoch: epochs finished; the next epoch to run.
        step: steps finished inside ``epoch`` (mid-epoch checkpoints).
        best: best monitored value (NaN before the first validation).
        best_epoch: its epoch (-1 before).
        bad_epochs: epochs since the last improvement (early stopping).
        plateau_best, plateau_wait, lr: reduce-on-plateau state and the current rate.
        run_loss, run_counts: sums of the step losses and [4] train counts ([K, 4] for a
            multiclass run, ``counts_shape``) of the epoch in progress (a mid-epoch resume
            reports the whole epoch).
        done: the run finished (all epochs or early stop); stopped_early: by early stopping.
        group_q, group_p: adaptive balancing only (``adaptive=(epochs, groups)``): the
            weights q after the last update [G] and the mix p_e each epoch samples from
            [epochs, G] (NaN rows: not decided yet), so a resume rebuilds the same epochs;
            run_group_loss: [G] sums of each group's train losses in the epoch in progress.
    """

    def __init__(
        self,
        lr: float,
        adaptive: tuple[int, int] | None = None,
        counts_shape: tuple[int, ...] = (4,),
    ) -> None:
        def var(value: Any, dtype: Any, name: str) -> Any:
            return tf.Variable(value, dtype=dtype, trainable=False, name=name)

        self.epoch = var(0, tf.int64, "epoch")
        self.step = var(0, tf.int64, "step")
        self.best = var(float("nan"), tf.float64, "best")
        self.best_epoch = var(-1, tf.int64, "best_epoch")
        self.bad_epochs = var(0, tf.int64, "bad_epochs")
        self.plateau_best = var(float("nan"), tf.float64, "plateau_best")
        self.plateau_wait = var(0, tf.int64, "plateau_wait")
        self.lr = var(lr, tf.float64, "lr")
        self.run_loss = var(0.0, tf.float64, "run_loss")
        self.run_counts = var(np.zeros(counts_shape), tf.float64, "run_counts")
        self.done = var(False, tf.bool, "done")
        self.stopped_early = var(False, tf.bool, "stopped_early")
        if adaptive is not None:  # static runs keep the checkpoint layout they always had
            epochs, groups = adaptive
            self.group_q = var(np.zeros(groups), tf.float64, "group_q")
            self.group_p = var(np.full((epochs, groups), np.nan), tf.float64, "group_p")
            self.run_group_loss = var(np.zeros(groups), tf.float64, "run_group_loss")

    def trackables(self) -> dict[str, Any]:
        """Keyword arguments for ``tf.train.Checkpoint``."""
        return {k: v for k, v in vars(self).items()}

    def get(self, name: str) -> Any:
        """A Python value of one counter."""
        value = getattr(self, name).numpy()
        return value.item() if np.ndim(value) == 0 else value

    def set(self, **values: Any) -> None:
        """Assign counters by name."""
        for name, value in values.items():
            getattr(self, name).assign(value)

    def next_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: step 0 and the running sums of the epoch cleared."""
        zeros = np.zeros(self.run_counts.shape, np.float64)
        self.set(epoch=epoch, step=0, run_loss=0.0, run_counts=zeros)


def make_checkpoint(model: Any, optimizer: Any, state: RunState) -> Any:
    """A ``tf.train.Checkpoint`` of everything a resume needs.

    Besides weights, optimiser and counters it holds the state of the model's Keras
    seed generators (dropout), which the model's own checkpoint leaves out, so a resumed
    run draws the same dropout masks as an uninterrupted one.
    """
    seeds = [v for v in model.variables if "seed_generator_state" in v.path]
    return tf.train.Checkpoint(
        model=model, optimizer=optimizer, seed_generators=seeds, **state.trackables()
    )


def restore_latest(checkpoint: Any, directory: Path) -> str | None:
    """Restore the newest complete checkpoint in ``directory``; its path, or None if none.

    Raises:
        UserError: a checkpoint that does not fit the model (another config wrote it).
    """
    latest = tf.train.latest_checkpoint(str(directory))
    if latest is None:
        return None
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise UserError(
            f"checkpoint {latest} does not match this model/optimiser ({err}); "
            "it was written by another config. Start a new run with --overwrite"
        ) from err
    return latest


class Checkpoints:
    """The checkpoints of one run: saved by every worker (collective), kept by the chief.

    Args:
        checkpoint: from :func:`make_checkpoint`.
        base: the work dir's ``checkpoints/`` folder (shared by all workers).
        runtime: where this process runs (non-chief workers write to a temp dir).
        keep: how many checkpoints the chief keeps.
    """

    def __init__(self, checkpoint: Any, base: Path, runtime: Runtime, keep: int) -> None:
        self.checkpoint, self.base, self.runtime = checkpoint, Path(base), runtime
        self.directory = runtime.checkpoint_dir(self.base)
        self.manager = tf.train.CheckpointManager(checkpoint, str(self.directory), max_to_keep=keep)

    def save(self, number: int) -> None:
        """Save checkpoint ``number`` (every worker must call it); drop a worker's copy."""
        self.manager.save(checkpoint_number=number)
        self.runtime.cleanup_checkpoint_dir(self.directory)

    def restore(self) -> str | None:
        """Restore the chief's newest checkpoint (:func:`restore_latest`)."""
        return restore_latest(self.checkpoint, self.base)
