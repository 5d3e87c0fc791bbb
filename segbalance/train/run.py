"""The entry of training: ``train(cfg, work_dir)`` checks, prepares, runs and reports.

Order matters for the user: everything that can be refused (config, data, work dir, the
batch over the replicas) is checked before the work dir is written, and a resume's config
is compared before TensorFlow starts a strategy. Then :class:`~segbalance.train.trainer.
Trainer` runs the epochs on the :class:`~segbalance.train.runtime.Runtime` of this process,
observed by the caller's callbacks and :class:`~segbalance.train.images.GroupImages`
(TensorBoard images per group). :func:`train_or_resume` starts, resumes or reuses a run by
what its folder holds (``compare`` and ``cv`` run it per strategy and fold).

A run killed at any point resumes (``resume=True``) at its last checkpoint: the same plan
from the same epoch and step, so the finished run equals an uninterrupted one.

``augment.device`` places augmentation in the input pipeline or in the train step
(:mod:`segbalance.train.device_augment`); data.json records the choice for a resume.

A manifest with classes (``prepare --classes``) makes a multiclass run
(:mod:`segbalance.train.task`): K softmax channels, ``model.classes`` taken from the
manifest. ``config.yaml`` keeps the config as given, so a resume compares like with like.

Example:
    >>> cfg = load_config(None, {"data.manifest": "data/manifest.csv", "train.epochs": 2})
    >>> result = train(cfg, "runs/first")  # doctest: +SKIP
    >>> result.best_score, result.best_model  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras

from segbalance.config import Config
from segbalance.data.manifest import Manifest
from segbalance.errors import UserError, unknown_name_error
from segbalance.models import model_names
from segbalance.pipeline.augment import check_groups
from segbalance.pipeline.budget import CacheChoice, available_memory, choose_cache
from segbalance.train.device_augment import RECORD, choose_placement, recorded_device
from segbalance.train.fingerprint import (
    check_same_data,
    data_fingerprint,
    read_fingerprint,
    write_fingerprint,
)
from segbalance.train.images import GroupImages
from segbalance.train.plan import load_run_data, training_plan
from segbalance.train.result import TrainResult, complete_result
from segbalance.train.runtime import make_runtime
from segbalance.train.task import resolve_task
from segbalance.train.trainer import Trainer
from segbalance.train.workdir import (
    CONFIG,
    DATA,
    WorkDir,
    check_work_dir,
    create_work_dir,
    remove_new_run,
)


def check_config(cfg: Config) -> None:
    """Values the config types cannot check alone (the model registry).

    Raises:
        UserError: naming the key.
    """
    if cfg.model.name not in model_names():
        raise unknown_name_error("model", cfg.model.name, model_names())


def cache_choice(
    cfg: Config,
    data: tuple[Manifest, Manifest],
    resumed: WorkDir | None,
    select: Manifest | None = None,
) -> CacheChoice:
    """``data.cache_decoded`` for this run; a resume keeps the choice the run started with.

    ``data``: the train and valid rows; ``select``: the selection rows, which the valid
    choice covers too.

    The train cache rounds resized pixels, so switching it on a resume (other free memory)
    would make the resumed run differ from an uninterrupted one.
    """
    if resumed is not None:
        recorded = read_fingerprint(resumed.root) or {}
        was = recorded.get("cache")
        if isinstance(was, dict):
            reason = f"cache as the run started ({resumed.root / DATA})"
            return CacheChoice(bool(was.get("train")), bool(was.get("valid")), reason)
    held_out = len(data[1]) + (0 if select is None else len(select))
    return choose_cache(cfg.data, len(data[0]), held_out, available_memory())


def train(
    cfg: Config,
    work_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Train the model of ``cfg`` and write the run into ``work_dir``.

    Args:
        cfg: the full config (``data.manifest`` set).
        work_dir: the run's folder (see :mod:`segbalance.train.workdir` for the rules).
        resume: continue the run in ``work_dir`` from its last checkpoint.
        overwrite: delete the run in ``work_dir`` first.
        callbacks: Keras callbacks that observe the run (:mod:`segbalance.train.trainer`).

    Raises:
        UserError: bad config, data or work dir; a batch not divisible by the replicas.
    """
    check_config(cfg)
    # Everything that can be refused is checked before TensorFlow starts or anything is written.
    wd = check_work_dir(work_dir, cfg, resume=resume, overwrite=overwrite)
    train_rows, valid_rows, select = load_run_data(cfg)  # bad data fails before any write
    data = (train_rows, valid_rows)
    check_groups(cfg.augment, train_rows.groups)
    task = resolve_task(cfg, train_rows)  # model.classes, class weights, the loss's classes
    plan = training_plan(cfg, train_rows)
    fingerprint = data_fingerprint(train_rows, valid_rows, select)
    if resume:
        check_same_data(wd.root, fingerprint)
    cache = cache_choice(cfg, data, wd if resume else None, select)
    fingerprint["cache"] = {"train": cache.train, "valid": cache.valid}
    runtime = make_runtime(cfg.distribute)
    # After the strategy (it sets the visible GPUs); a resume augments where it started.
    recorded = recorded_device(wd.root) if resume else None
    placement = choose_placement(
        cfg.augment, train_rows.groups, task.num_classes, recorded=recorded
    )
    fingerprint[RECORD] = placement.device
    runtime.check_batch("train.batch_size", cfg.train.batch_size)
    valid_batch = cfg.train.validation_batch_size or cfg.train.batch_size
    runtime.check_batch("train.validation_batch_size", valid_batch)
    if resume and wd.metrics.is_file():
        return complete_result(wd, cfg, runtime.chief)
    created = runtime.chief and not resume  # the chief prepares the dir; workers read it
    if created:
        create_work_dir(wd, cfg)
        write_fingerprint(wd.root, fingerprint)
    policy = keras.mixed_precision.global_policy()
    try:  # the run sets the global dtype policy; callers get theirs back
        # Every run shows a few validation images per group in TensorBoard (images.py).
        images = GroupImages(valid_rows, cfg.data.image_size, wd.logs, cfg.train.threshold)
        try:
            observers = [*callbacks, images]
            trainer = Trainer(
                cfg,
                wd,
                runtime,
                data,
                plan,
                cache,
                observers,
                task,
                placement,
                select,
            )
        except UserError:
            # Refused before the first step (e.g. ImageNet weights not downloadable): the
            # run this call just created holds nothing trained, so a corrected retry must
            # not be told the folder is taken.
            if created:
                remove_new_run(wd)
            raise
        return trainer.run(resume=resume)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def resumable(cfg: Config, work_dir: str | Path) -> bool:
    """Whether :func:`train_or_resume` resumes ``work_dir`` (it holds a run's config.yaml).

    Checks the work-dir rules without writing (so a batch of runs can refuse before the
    first one starts).

    Raises:
        UserError: a folder that is not a run, or a run of another config.
    """
    resume = (Path(work_dir) / CONFIG).is_file()
    check_work_dir(work_dir, cfg, resume=resume, overwrite=False)
    return resume


def train_or_resume(
    cfg: Config, work_dir: str | Path, callbacks: Sequence[keras.callbacks.Callback] = ()
) -> TrainResult:
    """A new run in an empty ``work_dir``, else its run resumed (a finished one reused).

    What ``compare`` and ``cv`` run per strategy or fold, so killing them loses at most
    the epochs since each run's last checkpoint.
    """
    return train(cfg, work_dir, resume=resumable(cfg, work_dir), callbacks=callbacks)
