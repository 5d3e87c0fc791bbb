"""Where training augments (``augment.device``): in the input pipeline or in the train step.

``accelerator``: the pipeline only decodes and resizes and sends uint8 pixels with each
sample's seed; the compiled train step augments each replica's share of the batch on its
device (:mod:`segbalance.pipeline.deferred`), from the same stateless seeds, so both
placements give the same batches. ``auto`` chooses the step when TensorFlow sees a GPU (a
CPU-side augmentation pipeline is what starves one) and the pipeline on CPU-only machines,
where tf.data's threads augment the next batches while the step runs. The albumentations
engine is numpy code on the CPU: ``accelerator`` refuses it and ``auto`` keeps it in the
pipeline. With nothing to augment there is nothing to defer.

A resume augments where the run started (``data.json`` records it): ``auto`` on another
machine would otherwise move it, and streamed pixels would be rounded differently.

Example:
    >>> choose_placement(AugmentConfig(), ["0"], has_gpu=False).note
    'augmentation: in the input pipeline (auto: no GPU)'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segbalance.config import AugmentConfig
from segbalance.errors import UserError
from segbalance.pipeline.augment import build_augmenter, resolve_ops
from segbalance.pipeline.deferred import BatchFn, batch_augmenter
from segbalance.train.fingerprint import read_fingerprint
from segbalance.train.precision import gpu_available

#: The key of data.json that records the placement a run started with.
RECORD = "augment_device"


@dataclass(frozen=True)
class AugmentPlacement:
    """Where a run augments, the run header's line, and the step's batch augmenter."""

    on_device: bool = False
    note: str = "augmentation: in the input pipeline"
    step: BatchFn | None = None  # set when on_device

    @property
    def device(self) -> str:
        """``accelerator`` or ``cpu``, as ``augment.device`` spells them."""
        return "accelerator" if self.on_device else "cpu"


#: Augmentation in the input pipeline (the Trainer's default).
IN_PIPELINE = AugmentPlacement()


def _where(cfg: AugmentConfig, has_gpu: Callable[[], bool]) -> tuple[bool, str]:
    """(augment in the step, why) from ``augment.device`` alone."""
    if cfg.device == "cpu":
        return False, "augment.device cpu"
    if cfg.device == "accelerator":
        if cfg.engine == "albumentations":  # a Config built in code skips load's check
            raise UserError(
                "augment.device 'accelerator' cannot run augment.engine 'albumentations' "
                "(numpy, on the CPU); set augment.device to cpu or auto"
            )
        return True, "augment.device accelerator"
    if cfg.engine == "albumentations":
        return False, "auto: engine albumentations runs on the CPU"
    return (True, "auto: GPU present") if has_gpu() else (False, "auto: no GPU")


def choose_placement(
    cfg: AugmentConfig,
    group_names: Sequence[str],
    num_classes: int = 1,
    *,
    has_gpu: bool | Callable[[], bool] | None = None,
    recorded: str | None = None,
) -> AugmentPlacement:
    """The placement of a run's augmentation (module doc).

    Args:
        cfg: the ``augment`` section.
        group_names: the train rows' groups (index = group id).
        num_classes: 1 for binary masks, K for class indices.
        has_gpu: whether a GPU is used; default: ask TensorFlow.
        recorded: the placement a resumed run started with (``cpu`` or ``accelerator``).

    Raises:
        UserError: ``accelerator`` with the albumentations engine; ``augment.groups``
            naming groups the data does not have.
    """
    gpu = gpu_available if has_gpu is None else has_gpu
    probe = gpu if callable(gpu) else (lambda: bool(gpu))
    specs = [cfg.groups.get(name, cfg.default) for name in group_names]
    if cfg.engine == "none" or (cfg.engine == "keras" and not any(map(resolve_ops, specs))):
        return AugmentPlacement(note="augmentation: none")
    if recorded in ("cpu", "accelerator"):
        on_device, why = recorded == "accelerator", "as the run started, data.json"
    else:
        on_device, why = _where(cfg, probe)
    if not on_device:
        return AugmentPlacement(note=f"augmentation: in the input pipeline ({why})")
    where = "on the accelerator" if probe() else "on the CPU (no GPU)"
    step = batch_augmenter(build_augmenter(cfg, group_names, num_classes))
    return AugmentPlacement(True, f"augmentation: in the train step, {where} ({why})", step)


def recorded_device(work_dir: str | Path) -> str | None:
    """The placement recorded in a run's data.json; None when no run was recorded.

    A run from before the key augmented in the input pipeline: ``cpu``, so that resuming it
    on a GPU machine does not move its augmentation mid-run.
    """
    fingerprint = read_fingerprint(Path(work_dir))
    if fingerprint is None:
        return None
    value = fingerprint.get(RECORD, "cpu")
    return value if isinstance(value, str) else "cpu"
