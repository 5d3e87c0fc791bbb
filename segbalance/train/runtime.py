"""Where a run executes: the ``tf.distribute`` strategy, this worker's place, BN sync.

One training loop serves every case; this module only picks the strategy:

* nothing set: the default strategy (one device);
* ``devices="0,1"``: ``MirroredStrategy`` over those GPUs of this machine;
* ``devices="cpu:2"``: ``MirroredStrategy`` over 2 logical CPU devices (tests multi-device
  code on a CPU-only machine);
* ``TF_CONFIG`` set, or ``workers=[host:port, ...]`` with ``worker_index``:
  ``MultiWorkerMirroredStrategy`` (MWMS); the flags are turned into ``TF_CONFIG``
  (:mod:`segbalance.train.cluster` checks the cluster first).

The loop gets one :class:`Runtime`: the strategy plus everything that depends on which
worker this process is (chief or not, checkpoint dir, cross-worker checks).

Example:
    >>> runtime = make_runtime(DistributeConfig(devices="cpu:2"))
    >>> runtime.replicas, runtime.chief
    (2, True)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from segbalance.config import DistributeConfig
from segbalance.errors import UserError
from segbalance.train.cluster import check_cluster, resolve_cluster, start_watchdog, tf_config_for

# Strategies made in this process, by devices/cluster. TensorFlow numbers collectives per
# strategy object from the same base, so a second MirroredStrategy over the same devices
# collides with the first ("shape mismatch in the collective instance"), and a second
# MWMS cannot start its server again: one strategy per setting and process is reused.
_MADE: dict[tuple[Any, ...], Any] = {}


def parse_devices(spec: str | None) -> tuple[str, list[int]] | None:
    """Parse ``--devices``: ``"0,1"`` (GPU ids) or ``"cpu:N"`` (N logical CPU devices).

    Returns:
        None for "not set", ``("gpu", [ids])`` or ``("cpu", [0..N-1])``.

    Example:
        >>> parse_devices("0,1"), parse_devices("cpu:2")
        (('gpu', [0, 1]), ('cpu', [0, 1]))
    """
    if spec is None or not str(spec).strip():
        return None
    text = str(spec).strip().lower()
    hint = "use GPU ids such as '0,1' or 'cpu:N' for N logical CPU devices"
    if text.startswith("cpu"):
        count = text[3:].lstrip(":")
        if not count.isdigit() or int(count) < 1:
            raise UserError(f"--devices '{spec}' is not valid; {hint}")
        return "cpu", list(range(int(count)))
    ids = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in ids):
        raise UserError(f"--devices '{spec}' is not valid; {hint}")
    gpu_ids = [int(part) for part in ids]
    if len(set(gpu_ids)) != len(gpu_ids):
        raise UserError(f"--devices '{spec}' names a GPU twice")
    return "gpu", gpu_ids


def _configure_devices(kind: str, ids: list[int]) -> list[str]:
    """Make the requested devices visible; returns their logical names for MirroredStrategy."""
    if kind == "cpu":
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            config = [tf.config.LogicalDeviceConfiguration() for _ in ids]
            tf.config.set_logical_device_configuration(cpu, config)
        except RuntimeError as err:  # TF devices already initialised in this process
            if len(tf.config.list_logical_devices("CPU")) < len(ids):
                raise UserError(
                    f"cannot split the CPU into {len(ids)} devices: TensorFlow was initialised "
                    "before the strategy was built; create the strategy first"
                ) from err
        return [f"/cpu:{i}" for i in ids]
    gpus = tf.config.list_physical_devices("GPU")
    missing = [i for i in ids if i >= len(gpus)]
    if missing:
        visible = ", ".join(f"{i}: {g.name}" for i, g in enumerate(gpus)) or "none"
        raise UserError(
            f"--devices asks for GPU {missing[0]} but the visible GPUs are [{visible}] "
            "(CUDA_VISIBLE_DEVICES renumbers them from 0)"
        )
    try:
        tf.config.set_visible_devices([gpus[i] for i in ids], "GPU")
        return [f"/gpu:{n}" for n in range(len(ids))]
    except RuntimeError:  # already initialised: every GPU is visible, ids are the names
        return [f"/gpu:{i}" for i in ids]


def make_strategy(dcfg: DistributeConfig) -> Any:
    """The ``tf.distribute.Strategy`` for this process (call before any other TF work).

    Args:
        dcfg: devices, workers, worker index and the cluster connect timeout.

    Raises:
        UserError: bad ``--devices``, a missing GPU, a misconfigured or unreachable cluster.
    """
    devices = parse_devices(dcfg.devices)
    cluster = resolve_cluster(dcfg)
    if cluster is None:
        if devices is None:
            return tf.distribute.get_strategy()
        if ("local", dcfg.devices) not in _MADE:
            names = _configure_devices(*devices)
            one = len(names) == 1
            made = tf.distribute.get_strategy() if one else tf.distribute.MirroredStrategy(names)
            _MADE["local", dcfg.devices] = made
        return _MADE["local", dcfg.devices]
    workers, index = cluster
    key = ("cluster", tuple(workers), index, dcfg.devices)
    if key in _MADE:
        return _MADE[key]
    if any(k[0] == "cluster" for k in _MADE):
        raise UserError("this process already joined another cluster; start a new process")
    if devices is not None and devices[0] == "cpu" and len(devices[1]) > 1:
        raise UserError(
            f"--devices {dcfg.devices} cannot be combined with --workers: every worker "
            "uses one CPU device (or its GPUs, --devices 0,1)"
        )
    check_cluster(workers, index, dcfg.connect_timeout_s)
    if devices is not None and devices[0] == "gpu":
        _configure_devices(*devices)
    if not os.environ.get("TF_CONFIG"):
        os.environ["TF_CONFIG"] = tf_config_for(workers, index)
    watchdog = start_watchdog(dcfg.connect_timeout_s, workers)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    finally:
        assert watchdog.stdin is not None
        watchdog.stdin.close()  # EOF: the watchdog ends quietly
        watchdog.wait()
    # By default every next() on a distributed iterator all-reduces across workers whether
    # each still has data: 2x the step time of unet-small here (bench_workers.py). The loop
    # feeds every worker the same number of whole batches (sharded plan, padded validation)
    # and counts its steps, so that check is not needed.
    strategy.extended.experimental_enable_get_next_as_optional = False
    _MADE[key] = strategy
    return strategy


def worker_info(strategy: Any) -> tuple[int, int]:
    """``(worker_index, num_workers)``: ``(0, 1)`` unless the strategy spans several workers.

    The index counts the chief first, as in ``--workers``.
    """
    extended = getattr(strategy, "extended", None)
    if not getattr(extended, "_in_multi_worker_mode", bool)():
        return 0, 1
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    chiefs = len(spec.get("chief", []))
    total = chiefs + len(spec.get("worker", []))
    index = resolver.task_id if resolver.task_type == "chief" else chiefs + resolver.task_id
    return int(index), int(total)


def check_same_on_all_workers(strategy: Any, what: str, values: list[int]) -> None:
    """Fail when the workers disagree on ``values`` (e.g. the epoch and step they restored).

    A worker that cannot see the chief's checkpoints (work dir not on a shared file
    system) would start from step 0 while the chief resumes: the collectives would then
    pair different steps. This gathers ``values`` from every worker and compares them.

    Raises:
        UserError: naming the first worker whose values differ from the chief's.
    """
    _, workers = worker_info(strategy)
    if workers == 1:
        return
    local = tf.constant([values], dtype=tf.int64)
    gathered = strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0).numpy()
    per_worker = gathered.reshape(workers, -1, len(values))[:, 0, :]
    for index, row in enumerate(per_worker):
        if list(row) != list(per_worker[0]):
            raise UserError(
                f"worker {index} has {what} {list(map(int, row))} but the chief has "
                f"{list(map(int, per_worker[0]))}; every worker must see the chief's work dir "
                "(put --work-dir on a shared file system)"
            )


def synchronize_batch_norm(model: Any) -> int:
    """Make every BatchNormalization layer of ``model`` use the statistics of the global batch.

    Keras 3 creates BN moving statistics with aggregation NONE: under MirroredStrategy or
    MWMS each replica silently keeps its own moving mean/variance, computed from its share
    of the batch, so workers end with different weights and the saved model holds only
    replica 0's statistics. Synchronised BN all-reduces the batch moments: every replica
    normalises with the global-batch statistics, exactly as one device would, and the moving
    statistics stay identical everywhere. Call it after building the model, before the
    first step is traced; nested models (keras.applications encoders) are included.

    Returns:
        The number of BatchNormalization layers switched.
    """
    count = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count


@dataclass(frozen=True)
class Runtime:
    """The strategy of a run and this process's place in it.

    Attributes:
        strategy: the ``tf.distribute`` strategy (default, Mirrored or MWMS).
        worker_index: this worker's index (the chief is 0).
        num_workers: workers in the cluster (1 on one machine).
    """

    strategy: Any
    worker_index: int = 0
    num_workers: int = 1

    @property
    def chief(self) -> bool:
        """True for the one process that writes files (best.keras, logs, metrics)."""
        return self.worker_index == 0

    @property
    def replicas(self) -> int:
        """Replicas in sync over all workers (the global batch is split over them)."""
        return int(self.strategy.num_replicas_in_sync)

    def check_batch(self, what: str, value: int) -> None:
        """Refuse a global batch that does not split evenly over the replicas.

        Raises:
            UserError: naming the key and a multiple that works.
        """
        if value % self.replicas:
            raise UserError(
                f"{what}={value} is not divisible by the {self.replicas} replicas; use a "
                f"multiple of {self.replicas} (each replica gets an equal share of the global "
                "batch)"
            )

    def checkpoint_dir(self, base: Path) -> Path:
        """Where this worker writes checkpoints: ``base`` for the chief, else a temp dir.

        Every MWMS worker must take part in ``CheckpointManager.save`` (the save runs
        collectives), but only the chief's copy is kept; the others write to
        ``base/.worker-<i>-tmp`` and remove it with :meth:`cleanup_checkpoint_dir`.
        Workers restore from ``base``, so it must be on a file system they all see.
        """
        return Path(base) if self.chief else Path(base) / f".worker-{self.worker_index}-tmp"

    def cleanup_checkpoint_dir(self, path: Path) -> None:
        """Remove a non-chief worker's temporary checkpoint dir; the chief's is kept."""
        if not self.chief and path.name.startswith(".worker-"):
            shutil.rmtree(path, ignore_errors=True)

    def check_same_on_all_workers(self, what: str, values: list[int]) -> None:
        """:func:`check_same_on_all_workers` on this run's strategy."""
        check_same_on_all_workers(self.strategy, what, values)


def make_runtime(dcfg: DistributeConfig) -> Runtime:
    """The :class:`Runtime` of this process (call before any other TensorFlow work).

    Raises:
        UserError: bad ``--devices``, a missing GPU, a misconfigured or unreachable cluster.
    """
    strategy = make_strategy(dcfg)
    index, workers = worker_info(strategy)
    return Runtime(strategy, index, workers)
