"""The rules of a multi-worker cluster: TF_CONFIG, worker addresses, probing, the watchdog.

Before ``MultiWorkerMirroredStrategy`` is created every worker opens its own port and waits
until every other worker's port answers (:func:`check_cluster`). TensorFlow itself waits
forever for a worker that never comes up, so this is where "worker 1 at host:port did not
answer within 60 s" comes from instead of a hang; :func:`start_watchdog` covers the case
where every port answered but the cluster still does not form.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

from segbalance.config import DistributeConfig
from segbalance.errors import UserError

#: Seconds between two connection attempts to a worker that is not up yet.
PROBE_INTERVAL_S = 0.25


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


def start_watchdog(timeout_s: float, workers: list[str]) -> subprocess.Popen[bytes]:
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
