"""One training session: model, optimiser, plan and checkpoints of a run, and its epochs.

:func:`segbalance.train.loop.train` checks the config and the work dir, then hands over
to :class:`Session`. Every worker runs the same steps, validations and checkpoint saves
(they are collective under MultiWorkerMirroredStrategy); only the chief writes files.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from segbalance import __version__
from segbalance.artifacts import ModelMeta, save_model
from segbalance.config import Config
from segbalance.data.manifest import Manifest
from segbalance.losses import get_loss
from segbalance.metrics import metrics_from_counts
from segbalance.models import build_model, set_encoder_trainable
from segbalance.pipeline.cache import DecodedCache
from segbalance.sampling import SamplingPlan, training_epoch_length
from segbalance.train import logs as runlog
from segbalance.train import precision as prec
from segbalance.train import schedule, steps
from segbalance.train.loop import TrainResult, loss_weights, result_from, timer
from segbalance.train.state import RunState, WorkDir, make_checkpoint, restore_latest


class Session:
    """Everything one run needs, built once (under ``strategy.scope()``).

    Args:
        cfg: the run's config.
        wd: its work dir (already prepared).
        strategy: the tf.distribute strategy.
        api: the distribute module (checkpoint dirs per worker).
        data: the train and valid rows (:func:`segbalance.train.loop.load_data`).
        chief: whether this process writes files.
        worker: (worker index, number of workers).
    """

    def __init__(
        self,
        cfg: Config,
        wd: WorkDir,
        strategy: tf.distribute.Strategy,
        api: Any,
        data: tuple[Manifest, Manifest],
        *,
        chief: bool,
        worker: tuple[int, int],
    ) -> None:
        self.cfg, self.wd, self.strategy, self.api = cfg, wd, strategy, api
        self.chief, self.worker = chief, worker
        self.train_rows, self.valid_rows = data
        self._cache: DecodedCache | None = None
        self.groups = self.train_rows.groups
        self.batch = cfg.train.batch_size
        self.policy = prec.apply_precision(prec.resolve_precision(cfg.train.precision))
        length = training_epoch_length(len(self.train_rows), cfg.data.epoch_length, self.batch)
        self.steps = length // self.batch
        balance, self.sample_weights = loss_weights(cfg, self.train_rows)
        self.plan = SamplingPlan(
            self.train_rows.group_ids,
            self.groups,
            balance=balance,
            weights=cfg.sampling.weights if balance == cfg.sampling.balance else None,
            mode=cfg.sampling.mode,
            seed=cfg.train.seed,
            epoch_length=length,
        )
        keras.utils.set_random_seed(cfg.train.seed)  # identical initial weights everywhere
        with strategy.scope():
            self.model = build_model(cfg.model, cfg.data.image_size)
            self.optimizer = schedule.build_optimizer(
                cfg.optimizer, self.steps, cfg.train.epochs, self.policy
            )
            # Built on every variable, so unfreezing the encoder later needs no rebuild.
            self.optimizer.build(self.model.trainable_variables)
            self.state = RunState(cfg.optimizer.lr)
        if strategy.num_replicas_in_sync > 1 and hasattr(api, "synchronize_batch_norm"):
            # Per-replica BN statistics would make replicas (and workers) diverge.
            api.synchronize_batch_norm(self.model)
        steps.own_gradient_reduction(self.optimizer)
        self.loss_fn = get_loss(cfg.loss)
        self.checkpoint = make_checkpoint(self.model, self.optimizer, self.state)
        self.ckpt_dir = Path(api.checkpoint_dir_for(strategy, wd.checkpoints))
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.ckpt_dir), max_to_keep=cfg.train.keep_checkpoints
        )
        self._train_steps: dict[bool, Any] = {}

    # ------------------------------------------------------------------------ public
    def run(self, resume: bool) -> TrainResult:
        """Train the remaining epochs, then write metrics.json."""
        state = self.state
        if resume:
            found = restore_latest(self.checkpoint, self.wd.checkpoints)
            # A worker that cannot see the chief's checkpoints would pair other steps.
            self.api.check_same_on_all_workers(
                self.strategy, "epoch and step", [state.get("epoch"), state.get("step")]
            )
            where = f"epoch {state.get('epoch') + 1} step {state.get('step')}"
            self._say(f"resuming from {found} ({where})" if found else "no checkpoint: from 0")
        self.log = runlog.RunLog(
            self.wd.root, self.groups, chief=self.chief, done_epochs=state.get("epoch")
        )
        self._say(self._header())
        try:
            if not state.get("done"):
                self._epochs()
            return self._finish()
        finally:
            self.log.close()

    # ------------------------------------------------------------------------ epochs
    def _epochs(self) -> None:
        cfg, state = self.cfg, self.state
        ds, eval_steps, real = steps.eval_dataset(
            self.strategy,
            self.valid_rows,
            cfg.data.image_size,
            cfg.train.validation_batch_size or self.batch,
            self.worker,
        )
        eval_step = steps.make_eval_step(
            self.strategy, self.model, self.loss_fn, len(self.groups), cfg.train.threshold, real
        )
        for epoch in range(state.get("epoch"), cfg.train.epochs):
            if cfg.optimizer.schedule == "plateau":
                schedule.set_lr(self.optimizer, state.get("lr"))
            loss, counts, seconds, seen = self._train_epoch(epoch)
            val = steps.validate(eval_step, ds, eval_steps, self.groups)
            row = self._row(epoch, loss, counts, seconds, seen, val)
            improved = self._track_best(epoch, row)
            stop = self._after_epoch(row)
            self.log.epoch_end(row, self.plan.counts(epoch))
            self._say(runlog.summary_line(row, cfg.train.epochs, cfg.train.monitor, improved))
            state.set(epoch=epoch + 1, step=0, run_loss=0.0, run_counts=np.zeros(4))
            if stop:
                state.set(stopped_early=True)
                self._say(f"early stopping: no progress for {state.get('bad_epochs')} epochs")
            state.set(done=stop or epoch + 1 == cfg.train.epochs)
            self._save(epoch + 1, 0)
            if stop:
                break

    def _train_step(self, epoch: int) -> Any:
        frozen = epoch < self.cfg.model.freeze_encoder_epochs
        if set_encoder_trainable(self.model, not frozen) and frozen not in self._train_steps:
            self._say("encoder frozen" if frozen else "encoder unfrozen")
        if frozen not in self._train_steps:
            self._train_steps[frozen] = steps.make_train_step(
                self.strategy,
                self.model,
                self.optimizer,
                self.loss_fn,
                self.batch,
                self.cfg.train.threshold,
            )
        return self._train_steps[frozen]

    def decoded_cache(self) -> DecodedCache | None:
        """The train rows decoded once (``data.cache_decoded``), built on first use."""
        if not self.cfg.data.cache_decoded:
            return None
        if self._cache is None:
            self._cache = DecodedCache.build(self.train_rows, self.cfg.data.image_size)
            if self.chief:
                print(
                    f"cached {len(self.train_rows)} decoded train images "
                    f"({self._cache.nbytes / 2**20:.0f} MiB)",
                    flush=True,
                )
        return self._cache

    def _train_epoch(self, epoch: int) -> tuple[float, np.ndarray, float, int]:
        """Steps of one epoch from the checkpointed step on; mean loss, counts, time."""
        state, every = self.state, self.cfg.train.checkpoint_every_steps
        step_fn = self._train_step(epoch)
        start = state.get("step")
        data = steps.train_dataset(
            self.strategy,
            self.cfg,
            self.train_rows,
            self.plan,
            epoch,
            start,
            self.sample_weights,
            self.decoded_cache(),
        )
        # A live bar on a terminal; one line per epoch in a log file.
        verbose = (1 if sys.stdout.isatty() else 2) if self.chief else 0
        bar = keras.utils.Progbar(self.steps, stateful_metrics=["loss", "iou"], verbose=verbose)
        self._say(f"epoch {epoch + 1}/{self.cfg.train.epochs}")
        totals: dict[str, Any] = {
            "loss": float(state.get("run_loss")),
            "counts": np.asarray(state.get("run_counts"), np.float64),
        }
        pending: list[tuple[int, Any]] = []

        def collect() -> None:
            # Reading a step's results waits for it: done one step late, so the device
            # already runs the next step while Python updates the bar.
            for done, (loss, c) in pending:
                totals["loss"] += float(loss.numpy())
                totals["counts"] = totals["counts"] + c.numpy()
                iou = float(metrics_from_counts(*totals["counts"])["iou"])
                bar.update(done, [("loss", totals["loss"] / done), ("iou", iou)])
            pending.clear()

        iterator, began = iter(data), timer()
        for step in range(start, self.steps):
            result = step_fn(next(iterator))
            collect()
            pending.append((step + 1, result))
            if every and (step + 1) % every == 0 and step + 1 < self.steps:
                collect()
                state.set(step=step + 1, run_loss=totals["loss"], run_counts=totals["counts"])
                self._save(epoch, step + 1)
        collect()
        seconds = timer() - began
        seen = (self.steps - start) * self.batch
        return totals["loss"] / self.steps, totals["counts"], seconds, seen

    def _row(
        self,
        epoch: int,
        loss: float,
        counts: np.ndarray,
        seconds: float,
        seen: int,
        val: dict[str, Any],
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss,
            "iou": float(metrics_from_counts(*counts)["iou"]),
            **{k: v for k, v in val.items() if k != "groups"},
            "lr": schedule.current_lr(self.optimizer),
            "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else float("nan"),
        }
        for g, entry in val["groups"].items():
            nan = float("nan")
            row[f"iou_{g}"] = nan if entry["iou"] is None else entry["iou"]
            row[f"dice_{g}"] = nan if entry["dice"] is None else entry["dice"]
        return row

    def _track_best(self, epoch: int, row: dict[str, Any]) -> bool:
        """Update the best score; write best.keras when it improved."""
        column, mode = runlog.MONITORS[self.cfg.train.monitor]
        value, best = float(row[column]), self.state.get("best")
        if not math.isfinite(value):
            improved = False
        else:
            improved = math.isnan(best) or (value > best if mode == "max" else value < best)
        if improved:
            self.state.set(best=value, best_epoch=epoch + 1, bad_epochs=0)
            if self.chief:
                save_model(self.model, self.wd.best, self._meta(epoch + 1, value))
        else:
            self.state.set(bad_epochs=self.state.get("bad_epochs") + 1)
        return improved

    def _after_epoch(self, row: dict[str, Any]) -> bool:
        """Reduce-on-plateau bookkeeping; True when early stopping ends the run."""
        cfg, state = self.cfg, self.state
        column, mode = runlog.MONITORS[cfg.train.monitor]
        if cfg.optimizer.schedule == "plateau" and math.isfinite(float(row[column])):
            best = state.get("plateau_best")
            plateau = schedule.Plateau(
                cfg.optimizer.plateau_factor,
                cfg.optimizer.plateau_patience,
                cfg.optimizer.min_lr,
                mode,
                None if math.isnan(best) else best,
                state.get("plateau_wait"),
            )
            lr = plateau.step(float(row[column]), state.get("lr"))
            if lr < state.get("lr"):
                self._say(f"reduce on plateau: lr {state.get('lr'):.2e} -> {lr:.2e}")
            state.set(plateau_best=plateau.best, plateau_wait=plateau.wait, lr=lr)
        patience = cfg.train.early_stopping_patience
        return patience is not None and state.get("bad_epochs") >= patience

    # ------------------------------------------------------------------------ output
    def _save(self, epoch: int, step: int) -> None:
        """A checkpoint on every worker (collective); workers' copies are temporary."""
        self.manager.save(checkpoint_number=epoch * self.steps + step)
        self.api.cleanup_checkpoint_dir(self.strategy, self.ckpt_dir)

    def _meta(self, epoch: int, score: float) -> ModelMeta:
        cfg = self.cfg
        return ModelMeta(
            image_size=(int(cfg.data.image_size[0]), int(cfg.data.image_size[1])),
            groups=list(self.groups),
            threshold=cfg.train.threshold,
            preprocessing="0-255",
            output="logits",
            config=cfg.model_dump(mode="json"),
            extra={
                "epoch": epoch,
                "monitor": cfg.train.monitor,
                "score": score,
                "precision": self.policy,
                "segbalance_version": __version__,
            },
        )

    def _finish(self) -> TrainResult:
        state = self.state
        if not state.get("done"):
            state.set(done=True)
            self._save(state.get("epoch"), 0)
        rows = self.log.rows
        # Epoch 1 includes tracing the steps: the steady speed is that of later epochs.
        speeds = [float(r["images_per_s"]) for r in rows if runlog._finite(r["images_per_s"])]
        speeds = speeds[1:] or speeds
        summary = runlog.metrics_summary(
            rows,
            self.groups,
            self.cfg.train.monitor,
            epochs=self.cfg.train.epochs,
            stopped_early=bool(state.get("stopped_early")),
            extra={
                "precision": self.policy,
                "replicas": self.strategy.num_replicas_in_sync,
                "workers": self.worker[1],
                "global_batch_size": self.batch,
                "steps_per_epoch": self.steps,
                "epoch_length": self.plan.epoch_length,
                "train_images_per_s": float(np.median(speeds)) if speeds else None,
                "target_mix": self.plan.target,
                "quotas": self.plan.quotas,
                "best_model": self.wd.best.name if self.wd.best.is_file() else None,
            },
        )
        if self.chief:
            runlog.write_metrics(self.wd.metrics, summary)
            self._say(f"done: {self.wd.root} (best.keras, history.csv, metrics.json, logs/)")
        return result_from(self.wd, self.cfg, rows, summary)

    def _header(self) -> str:
        cfg, plan = self.cfg, self.plan
        mix = ", ".join(f"{g}:{p:.2f}" for g, p in plan.target.items())
        lines = [
            f"train {len(self.train_rows)} images, valid {len(self.valid_rows)}, "
            f"{len(self.groups)} groups; model {cfg.model.name} at {cfg.data.image_size}",
            f"{prec.describe(self.policy, cfg.train.precision)}; "
            f"{self.strategy.num_replicas_in_sync} replica(s), {self.worker[1]} worker(s)",
            f"plan {plan.balance}/{plan.mode}: {self.steps} steps of {self.batch} per epoch; "
            f"target mix {mix}",
        ]
        lines += plan.report([0])["warnings"]
        return "\n".join(lines)

    def _say(self, text: str) -> None:
        if self.chief:
            print(text, flush=True)
