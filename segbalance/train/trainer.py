"""The epochs and steps of one run: :class:`Trainer`, observed through Keras callbacks.

Per epoch ``e`` the sampling plan gives the row order; each worker reads its share of every
global batch (:meth:`Trainer.epoch_reads`) through ``distribute_datasets_from_function``; a
compiled ``strategy.run`` step takes the gradient (``model.fit`` fails under
MultiWorkerMirroredStrategy in Keras 3). After each epoch: validation per group,
``best.keras`` when the monitored value improved, a history row, a checkpoint. An adaptive
balance (:mod:`segbalance.train.adaptive`) decides the next epoch's group mix from that
validation, before the checkpoint, which records it.

Every worker runs the same steps, validations and checkpoint saves (they are collective
under MWMS); only the chief writes files. Best score, reduce-on-plateau and early stopping
live in the checkpointed :class:`~segbalance.train.checkpoint.RunState`, so a resumed run
equals an uninterrupted one.

Callbacks follow the ``keras.callbacks.Callback`` protocol: ``on_train_begin``,
``on_epoch_begin(epoch)``, ``on_train_batch_begin/end(step, logs)`` (logs: running ``loss``
and ``iou`` of the epoch, ``step_loss``), ``on_epoch_end(epoch, logs)`` (logs: the history
row), ``on_train_end(logs)``. ``epoch`` counts from 0 as in Keras; ``params["trainer"]`` is
the trainer; setting ``model.stop_training`` ends the run after the epoch (as early stopping
does). A callback's own state is not checkpointed.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from segbalance.artifacts import save_model
from segbalance.config import Config
from segbalance.data.manifest import Manifest
from segbalance.models import build_model, set_encoder_trainable
from segbalance.pipeline.budget import CacheChoice
from segbalance.pipeline.cache import DecodedCache
from segbalance.pipeline.dataset import release_iterator
from segbalance.pipeline.verify import DATA_ERRORS, pipeline_error
from segbalance.sampling import SamplingPlan
from segbalance.train import logs as runlog
from segbalance.train import precision as prec
from segbalance.train import schedule, steps
from segbalance.train.adaptive import FIGURE, AdaptiveBalance, plot_weights
from segbalance.train.checkpoint import Checkpoints, RunState, make_checkpoint
from segbalance.train.device_augment import IN_PIPELINE, AugmentPlacement
from segbalance.train.monitor import Monitor
from segbalance.train.result import TrainResult, model_meta, result_from, run_summary
from segbalance.train.runtime import Runtime, synchronize_batch_norm
from segbalance.train.selection import PassOptions, describe_selection, validation_passes
from segbalance.train.task import Task, resolve_task, task_config
from segbalance.train.workdir import WorkDir


class Trainer:
    """Everything one run needs, built once (under ``strategy.scope()``).

    Args:
        cfg: the run's config.
        wd: its work dir (already prepared).
        runtime: the strategy and this worker's place in it.
        data: the train and valid rows (:func:`segbalance.train.plan.load_data`).
        plan: the sampling plan over the train rows and the per-row loss weights
            (:func:`segbalance.train.plan.training_plan`).
        cache: which rows to keep decoded in memory (:func:`segbalance.pipeline.budget.
            choose_cache`).
        callbacks: ``keras.callbacks.Callback`` objects observing the run.
        task: binary or the manifest's classes (default: ``task.resolve_task``).
        placement: where augmentation runs (:mod:`segbalance.train.device_augment`).
        select: rows that pick the best epoch (:mod:`segbalance.train.selection`); None:
            the valid rows do.
    """

    def __init__(
        self,
        cfg: Config,
        wd: WorkDir,
        runtime: Runtime,
        data: tuple[Manifest, Manifest],
        plan: tuple[SamplingPlan, np.ndarray | None],
        cache: CacheChoice,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        task: Task | None = None,
        placement: AugmentPlacement = IN_PIPELINE,
        select: Manifest | None = None,
    ) -> None:
        self.task = task if task is not None else resolve_task(cfg, data[0])
        cfg = task_config(cfg, self.task)  # model.classes = K for a multiclass manifest
        self.cfg, self.wd, self.runtime = cfg, wd, runtime
        self.strategy, self.cache, self.placement = runtime.strategy, cache, placement
        self.train_rows, self.valid_rows, self.select_rows = *data, select
        self._cache: DecodedCache | None = None
        self.groups = self.train_rows.groups
        self.batch = cfg.train.batch_size
        self.plan, self.sample_weights = plan
        self.adaptive = AdaptiveBalance.for_run(cfg.sampling, self.plan, cfg.train.epochs)
        self.steps = self.plan.epoch_length // self.batch
        self.jit = prec.resolve_jit(cfg.train.jit_compile, replicas=runtime.replicas)
        # Several workers would each measure (or read their own cache) and could disagree.
        solo = runtime.num_workers == 1
        self.precision = prec.choose_precision(  # before the seed: the probe draws no numbers
            cfg.train.precision,
            measure=steps.precision_probe(cfg, self.batch // runtime.replicas) if solo else None,
            cache=wd.root / prec.PROBE_FILE if solo else None,
            key=prec.probe_key(cfg.model.name, cfg.data.image_size, self.batch),
            steps=self.steps * cfg.train.epochs,
        )
        self.policy = prec.apply_precision(self.precision.policy)
        keras.utils.set_random_seed(cfg.train.seed)  # identical initial weights everywhere
        with self.strategy.scope():
            self.model = build_model(cfg.model, cfg.data.image_size)
            self.optimizer = schedule.build_optimizer(
                cfg.optimizer, self.steps, cfg.train.epochs, self.policy
            )
            # Built on every variable, so unfreezing the encoder later needs no rebuild.
            self.optimizer.build(self.model.trainable_variables)
            shape = None if self.adaptive is None else (cfg.train.epochs, len(self.groups))
            self.state = RunState(cfg.optimizer.lr, shape, self.task.counts_shape)
        self.monitor = Monitor(cfg, self.state, self._say, selection=select is not None)
        if runtime.replicas > 1:
            # Per-replica BN statistics would make replicas (and workers) diverge.
            synchronize_batch_norm(self.model)
        steps.own_gradient_reduction(self.optimizer)
        self.loss_fn = self.task.loss(cfg)
        self.checkpoints = Checkpoints(
            make_checkpoint(self.model, self.optimizer, self.state),
            wd.checkpoints,
            runtime,
            cfg.train.keep_checkpoints,
        )
        self._train_steps: dict[bool, Any] = {}
        self._released: list[threading.Thread] = []  # spent iterators still being dropped
        self.callbacks = keras.callbacks.CallbackList(
            list(callbacks),
            model=self.model,
            epochs=cfg.train.epochs,
            steps=self.steps,
            verbose=0,
            trainer=self,
        )

    # ------------------------------------------------------------------------ public
    def run(self, resume: bool) -> TrainResult:
        """Train the remaining epochs, then write metrics.json."""
        state = self.state
        if resume:
            found = self.checkpoints.restore()
            # A worker that cannot see the chief's checkpoints would pair other steps.
            self.runtime.check_same_on_all_workers(
                "epoch and step", [state.get("epoch"), state.get("step")]
            )
            where = f"epoch {state.get('epoch') + 1} step {state.get('step')}"
            self._say(f"resuming from {found} ({where})" if found else "no checkpoint: from 0")
        if self.adaptive is not None:  # after the restore: the plan gets the recorded mixes
            self.adaptive.begin(state, self.plan)
        self.log = runlog.RunLog(
            self.wd,
            self.groups,
            chief=self.runtime.chief,
            done_epochs=state.get("epoch"),
            adaptive=self.adaptive is not None,
            classes=self.task.class_names,
            selection=self.select_rows is not None,
        )
        self._say(self._header())
        self.model.stop_training = False
        try:
            try:  # callbacks decode files too (TensorBoard images): the same tracing applies
                self.callbacks.on_train_begin()
                if not state.get("done"):
                    self._epochs()
            except DATA_ERRORS as err:
                raise self._data_error(state.get("epoch")) from err
            result = self._finish()
            self.callbacks.on_train_end(self.log.rows[-1] if self.log.rows else None)
            return result
        finally:
            self.log.close()
            for thread in self._released:  # the last epoch's iterator, usually
                thread.join()

    def epoch_reads(
        self, epoch: int, start_step: int, pipelines: int, pipeline: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(plan positions, row indices) input pipeline ``pipeline`` reads in ``epoch``.

        The pipeline's per-replica batches go to its local replicas in order, which is the
        ``array_split`` order of the plan's sharding; a mid-epoch resume skips the steps
        already taken.
        """
        positions, indices = self.plan.shard(epoch, self.batch, pipelines, pipeline)
        skip = start_step * (self.batch // pipelines)
        return positions[skip:], indices[skip:]

    def decoded_cache(self) -> DecodedCache | None:
        """The train rows decoded once (``data.cache_decoded``), built on first use."""
        if not self.cache.train:
            return None
        if self._cache is None:
            self._cache = DecodedCache.build(self.train_rows, self.cfg.data.image_size)
            self._say(
                f"cached {len(self.train_rows)} decoded train images "
                f"({self._cache.nbytes / 2**20:.0f} MiB)"
            )
        return self._cache

    # ------------------------------------------------------------------------ epochs
    def _epochs(self) -> None:
        cfg, state = self.cfg, self.state
        opts = PassOptions.for_run(
            cfg, self.runtime, self.groups, (self.jit, self.cache.valid), self.task.class_names
        )
        check, pick = validation_passes(self.strategy, self.valid_rows, self.select_rows, opts)
        for epoch in range(state.get("epoch"), cfg.train.epochs):
            if cfg.optimizer.schedule == "plateau":
                schedule.set_lr(self.optimizer, state.get("lr"))
            self.callbacks.on_epoch_begin(epoch)
            loss, counts, seconds, seen = self._train_epoch(epoch)
            val = check.run(self.model, self.loss_fn)
            lr = schedule.current_lr(self.optimizer)
            row = runlog.history_row(epoch, loss, counts, seconds, seen, val, lr)
            if pick is not None:  # after valid: the adaptive mix reads valid only
                row.update(runlog.selection_columns(pick.run(self.model, self.loss_fn)))
            if self.adaptive is not None:  # state changes here are saved with epoch + 1
                row.update(self.adaptive.row(epoch, val, self.plan))
                self.adaptive.end_epoch(epoch, val, state, self.plan)
            improved = self.monitor.improved(epoch, row)
            if improved and self.runtime.chief:
                score = float(row[self.monitor.column])
                meta = model_meta(
                    self.cfg, self.groups, epoch + 1, score, self.policy, self.task.spec
                )
                save_model(self.model, self.wd.best, meta)
            stop = self.monitor.should_stop(row)
            self.log.epoch_end(row, self.plan.counts(epoch), val["groups"])
            self._say(runlog.summary_line(row, cfg.train.epochs, cfg.train.monitor, improved))
            self.callbacks.on_epoch_end(epoch, dict(row))
            state.next_epoch(epoch + 1)
            if stop:
                state.set(stopped_early=True)
                self._say(f"early stopping: no progress for {state.get('bad_epochs')} epochs")
            elif self.model.stop_training:
                state.set(stopped_early=True)
                self._say("stopped by a callback")
            stop = stop or bool(self.model.stop_training)
            state.set(done=stop or epoch + 1 == cfg.train.epochs)
            self._save(epoch + 1, 0)
            if stop:
                break

    def _data_error(self, epoch: int) -> Exception:
        """A decode failure inside the pipeline, traced to the rows that fail to decode."""
        runtime = self.runtime
        _, indices = self.epoch_reads(epoch, 0, runtime.num_workers, runtime.worker_index)
        return pipeline_error(self.train_rows, indices.tolist(), self.valid_rows, epoch)

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
                0 if self.adaptive is None else self.adaptive.train_loss_groups,
                jit_compile=self.jit,
                multiclass=self.task.multiclass,
                augment=self.placement.step,
            )
        return self._train_steps[frozen]

    def _train_epoch(self, epoch: int) -> tuple[float, np.ndarray, float, int]:
        """Steps of one epoch from the checkpointed step on; mean loss, counts, time."""
        state, every = self.state, self.cfg.train.checkpoint_every_steps
        step_fn = self._train_step(epoch)
        start = state.get("step")
        data = steps.train_dataset(
            self.strategy,
            lambda pipelines, pipeline: self.epoch_reads(epoch, start, pipelines, pipeline),
            self.cfg,
            self.train_rows,
            epoch,
            self.sample_weights,
            self.decoded_cache(),
            self.placement.on_device,
        )
        # A live bar on a terminal; one line per epoch in a log file.
        verbose = (1 if sys.stdout.isatty() else 2) if self.runtime.chief else 0
        bar = keras.utils.Progbar(self.steps, stateful_metrics=["loss", "iou"], verbose=verbose)
        self._say(f"epoch {epoch + 1}/{self.cfg.train.epochs}")
        totals: dict[str, Any] = {
            "loss": float(state.get("run_loss")),
            "counts": np.asarray(state.get("run_counts"), np.float64),
        }
        pending: list[tuple[int, Any]] = []
        hooks = bool(self.callbacks.callbacks)

        def collect() -> None:
            # Reading a step's results waits for it: done one step late, so the device
            # already runs the next step while Python updates the bar.
            for done, (loss, c, *by_group) in pending:
                if by_group and self.adaptive is not None:  # adaptive_signal train_loss
                    self.adaptive.add_train_loss(state, by_group[0].numpy())
                step_loss = float(loss.numpy())
                totals["loss"] += step_loss
                totals["counts"] = totals["counts"] + c.numpy()
                iou = runlog.train_iou(totals["counts"])
                bar.update(done, [("loss", totals["loss"] / done), ("iou", iou)])
                if hooks:
                    logs = {"loss": totals["loss"] / done, "iou": iou, "step_loss": step_loss}
                    self.callbacks.on_train_batch_end(done - 1, logs)
            pending.clear()

        box, began = [iter(data)], time.perf_counter()  # the only reference: see release_iterator
        for step in range(start, self.steps):
            if hooks:
                self.callbacks.on_train_batch_begin(step)
            result = step_fn(next(box[0]))
            collect()
            pending.append((step + 1, result))
            if every and (step + 1) % every == 0 and step + 1 < self.steps:
                collect()
                state.set(step=step + 1, run_loss=totals["loss"], run_counts=totals["counts"])
                self._save(epoch, step + 1)
        collect()
        seconds = time.perf_counter() - began
        self._released = [t for t in self._released if t.is_alive()] + [release_iterator(box)]
        seen = (self.steps - start) * self.batch
        return totals["loss"] / self.steps, totals["counts"], seconds, seen

    # ------------------------------------------------------------------------ output
    def _save(self, epoch: int, step: int) -> None:
        """A checkpoint on every worker (collective); workers' copies are temporary."""
        self.checkpoints.save(epoch * self.steps + step)

    def _finish(self) -> TrainResult:
        state = self.state
        if not state.get("done"):
            state.set(done=True)
            self._save(state.get("epoch"), 0)
        facts = {
            "precision": self.policy,
            "jit_compile": self.jit,
            "augment_device": self.placement.device,
            "replicas": self.runtime.replicas,
            "workers": self.runtime.num_workers,
            "global_batch_size": self.batch,
            "steps_per_epoch": self.steps,
            "epoch_length": self.plan.epoch_length,
            "target_mix": self.plan.target,
            "quotas": self.plan.quotas,
        }
        if self.select_rows is not None:  # it picked the best epoch, not the valid rows
            facts["selection_split"] = self.select_rows.split[0]
        if self.task.multiclass:  # per-class IoU of the best and last epoch too
            facts["classes"] = self.task.class_names
        if self.adaptive is not None:
            figure = self.wd.root / FIGURE if self.runtime.chief and self.log.rows else None
            if figure is not None:
                plot_weights(self.log.rows, self.groups, figure)
            facts["adaptive"] = self.adaptive.facts(state, figure)
        rows = self.log.rows
        stopped = bool(state.get("stopped_early"))
        summary = run_summary(
            self.cfg, self.wd, rows, self.groups, stopped_early=stopped, facts=facts
        )
        if self.runtime.chief:
            runlog.write_metrics(self.wd.metrics, summary)
            self._say(f"done: {self.wd.root} (best.keras, history.csv, metrics.json, logs/)")
        return result_from(self.wd, self.cfg, rows, summary)

    def _header(self) -> str:
        cfg, plan = self.cfg, self.plan
        mix = ", ".join(f"{g}:{p:.2f}" for g, p in plan.target.items())
        lines = [
            f"train {len(self.train_rows)} images, valid {len(self.valid_rows)}, "
            f"{len(self.groups)} groups; model {cfg.model.name} at {cfg.data.image_size}",
            f"{self.precision.note}; "
            f"{prec.describe_jit(self.jit, cfg.train.jit_compile, self.runtime.replicas)}; "
            f"{self.runtime.replicas} replica(s), {self.runtime.num_workers} worker(s)",
            f"plan {plan.balance}/{plan.mode}: {self.steps} steps of {self.batch} per epoch; "
            f"target mix {mix}",
            f"input: {self.cache.reason}",
            self.placement.note,
        ]
        if self.adaptive is not None:
            lines.append(self.adaptive.describe())
        valid_split = cfg.data.valid_split if cfg.data.fold is None else f"fold {cfg.data.fold}"
        lines.append(describe_selection(self.select_rows, valid_split, self.adaptive is not None))
        lines += self.task.describe()
        lines += plan.report([0])["warnings"]
        return "\n".join(lines)

    def _say(self, text: str) -> None:
        if self.runtime.chief:
            print(text, flush=True)
