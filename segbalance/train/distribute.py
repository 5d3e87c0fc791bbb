"""Which ``tf.distribute`` strategy a run uses, and the rules of a multi-worker cluster.

One training loop serves every case; this module only picks the strategy:

* nothing set: the default strategy (one device);
* ``devices="0,1"``: ``MirroredStrategy`` over those GPUs of this machine;
* ``devices="cpu:2"``: ``MirroredStrategy`` over 2 logical CPU devices (tests multi-device
  code on a CPU-only machine);
* ``TF_CONFIG`` set, or ``workers=[host:port, ...]`` with ``worker_index``:
  ``MultiWorkerMirroredStrategy`` (MWMS); the flags are turned into ``TF_CONFIG``.

Before MWMS is created every worker opens its own port and waits until every other
worker's port answers (:func:`check_cluster`). TensorFlow itself waits forever for a
worker that never comes up, so this is where "worker 1 at host:port did not answer within
60 s" comes from instead of a hang.

Example:
    >>> strategy = make_strategy(DistributeConfig(devices="cpu:2"))
    >>> strategy.num_replicas_in_sync, per_replica_batch(strategy, 8)
    (2, 4)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segbalance.config import DistributeConfig
from segbalance.errors import UserError

#: Seconds between two connection attempts to a worker that is not up yet.
PROBE_INTERVAL_S = 0.25

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


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too) and check the port, naming the bad value."""
    host, sep, port = str(address).strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"worker address '{address}' is not host:port (e.g. node1:12345, port 1-65535)"
        )
    return host, int(port)


def cluster_from_tf_config(raw: str) -> tuple[list[str], int]:
    """The worker list (chief first) and this task's position in it, from ``TF_CONFIG``.

    Raises:
        UserError: TF_CONFIG is not JSON, has jobs other than chief/worker, or no task.
    """
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        task_type, task_index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"TF_CONFIG is not valid ({err}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from err
    other = sorted(set(cluster) - {"chief", "worker"})
    if other:
        raise UserError(f"TF_CONFIG jobs {other} are not supported; use only 'chief' and 'worker'")
    chief, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    if len(chief) > 1:
        raise UserError(f"TF_CONFIG has {len(chief)} chiefs; at most one is allowed")
    if task_type not in ("chief", "worker"):
        raise UserError(f"TF_CONFIG task type '{task_type}' is not 'chief' or 'worker'")
    index = task_index if task_type == "chief" else len(chief) + task_index
    return chief + workers, index


def tf_config_for(workers: list[str], worker_index: int) -> str:
    """``TF_CONFIG`` for ``--workers``/``--worker-index``: worker 0 is the chief."""
    task = {"type": "worker", "index": worker_index}
    return json.dumps({"cluster": {"worker": list(workers)}, "task": task})


def resolve_cluster(
    dcfg: DistributeConfig, environ: Mapping[str, str] | None = None
) -> tuple[list[str], int] | None:
    """The cluster this process belongs to, or None for a single machine.

    ``TF_CONFIG`` and ``--workers``/``--worker-index`` may both be given only if they agree.
    """
    env = os.environ if environ is None else environ
    from_env = cluster_from_tf_config(env["TF_CONFIG"]) if env.get("TF_CONFIG") else None
    if dcfg.workers is None:
        if dcfg.worker_index is not None and from_env is None:
            raise UserError("--worker-index needs --workers host:port,... (or TF_CONFIG)")
        if from_env and dcfg.worker_index is not None and dcfg.worker_index != from_env[1]:
            raise UserError(
                f"--worker-index {dcfg.worker_index} disagrees with TF_CONFIG "
                f"(this task is worker {from_env[1]}); set one of them"
            )
        return from_env
    if dcfg.worker_index is None:
        raise UserError("--workers needs --worker-index (0 for the chief)")
    flags = ([str(w).strip() for w in dcfg.workers], dcfg.worker_index)
    if from_env is not None and from_env != flags:
        raise UserError(
            f"TF_CONFIG (workers {from_env[0]}, index {from_env[1]}) disagrees with "
            f"--workers {flags[0]} --worker-index {flags[1]}; unset TF_CONFIG or drop the flags"
        )
    return flags


def _port_open(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=max(timeout_s, 0.05)):
            return True
    except OSError:
        return False


def _listen(address: str) -> socket.socket:
    """Hold this worker's own port open so peers can see it is up (closed before gRPC binds)."""
    _, port = parse_address(address)
    sock = socket.socket(socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("", port))
        sock.listen(64)
    except OSError as err:
        sock.close()
        raise UserError(
            f"cannot listen on this worker's address {address} ({err}); "
            "is another process using the port? pick a free port in --workers"
        ) from err
    return sock


def check_cluster(workers: list[str], worker_index: int, timeout_s: float) -> None:
    """Validate the cluster and wait until every other worker's port accepts a connection.

    This worker listens on its own port meanwhile, so workers started in any order find
    each other. The port is released on return, before TensorFlow's server takes it.

    Args:
        workers: ``host:port`` of every worker; index 0 is the chief.
        worker_index: this worker's position in ``workers``.
        timeout_s: how long to wait for the others in total.

    Raises:
        UserError: bad index or address, duplicate addresses, a port already taken, or the
            first worker that did not answer within ``timeout_s`` (its index and address).
    """
    if not workers:
        raise UserError("--workers is empty; give host:port of every worker, chief first")
    if not 0 <= worker_index < len(workers):
        raise UserError(
            f"--worker-index {worker_index} is out of range for {len(workers)} worker(s) "
            f"{list(workers)}; valid: 0..{len(workers) - 1}"
        )
    parsed = [parse_address(w) for w in workers]
    if len(set(parsed)) != len(parsed):
        raise UserError(f"--workers {list(workers)} lists an address twice")
    pending = {i: parsed[i] for i in range(len(parsed)) if i != worker_index}
    own = _listen(workers[worker_index]) if pending else None
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            for i, (host, port) in list(pending.items()):
                if _port_open(host, port, min(2.0, deadline - time.monotonic())):
                    del pending[i]
            if not pending:
                break
            if time.monotonic() >= deadline:
                first = min(pending)
                missing = ", ".join(f"worker {i} at {workers[i]}" for i in sorted(pending))
                raise UserError(
                    f"worker {first} at {workers[first]} did not answer within {timeout_s:g} s "
                    f"(waiting for: {missing}); start every worker with the same --workers "
                    "list, or raise distribute.connect_timeout_s"
                )
            time.sleep(PROBE_INTERVAL_S)
    finally:
        if own is not None:
            own.close()


# Runs in a separate process: TensorFlow holds the GIL while it waits for the cluster,
# so no Python thread (or signal handler) of the waiting process would ever run.
_WATCHDOG = """
import os, select, signal, sys
parent, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if not ready:  # no word from the parent in time: it is stuck inside TensorFlow
    sys.stderr.write(message)
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
"""


def _watchdog(timeout_s: float, workers: list[str]) -> subprocess.Popen[bytes]:
    """A process that kills this one if the cluster has not formed after ``timeout_s``.

    MWMS blocks in C++ when a worker that answered the probe is gone again (or another
    program holds its port) and SIGTERM is caught by TensorFlow, so SIGKILL after a
    message is the only way to avoid a silent hang. Close its stdin to disarm it.
    """
    message = (
        f"segbalance train: error: the cluster {workers} did not form within {timeout_s:g} s "
        "although every port answered: a worker stopped meanwhile, or another program "
        "listens on a worker's port; restart all workers\n"
    )
    cmd = [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout_s), message]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE)


def _configure_devices(kind: str, ids: list[int]) -> list[str]:
    """Make the requested devices visible; returns their logical names for MirroredStrategy."""
    import tensorflow as tf

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
    import tensorflow as tf

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
    watchdog = _watchdog(dcfg.connect_timeout_s, workers)
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


def is_chief(strategy: Any) -> bool:
    """True for the one process that writes ``best.keras``, logs and ``metrics.json``."""
    return worker_info(strategy)[0] == 0


def checkpoint_dir_for(strategy: Any, base: Path) -> Path:
    """Where this worker writes checkpoints: ``base`` for the chief, else a temp dir.

    Every MWMS worker must take part in ``CheckpointManager.save`` (the save runs
    collectives), but only the chief's copy is kept; the others write to
    ``base/.worker-<i>-tmp`` and remove it with :func:`cleanup_checkpoint_dir`.
    Workers restore from ``base``, so it must be on a file system they all see.
    """
    index, _ = worker_info(strategy)
    return Path(base) if index == 0 else Path(base) / f".worker-{index}-tmp"


def cleanup_checkpoint_dir(strategy: Any, path: Path) -> None:
    """Remove a non-chief worker's temporary checkpoint dir; the chief's is kept."""
    if not is_chief(strategy):
        shutil.rmtree(path, ignore_errors=True)


def per_replica_batch(strategy: Any, global_batch: int) -> int:
    """The share of each replica in a global batch; the batch must divide evenly.

    Raises:
        UserError: ``global_batch`` is not a multiple of the number of replicas.
    """
    replicas = int(strategy.num_replicas_in_sync)
    if global_batch < replicas or global_batch % replicas:
        low = max(replicas, global_batch - global_batch % replicas)
        raise UserError(
            f"batch size {global_batch} does not divide over {replicas} replicas; "
            f"use a multiple of {replicas}, e.g. --batch-size {low} or {low + replicas}"
        )
    return global_batch // replicas


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
    import tensorflow as tf

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
    import keras

    count = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count
