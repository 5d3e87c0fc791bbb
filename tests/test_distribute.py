"""segbalance.train.cluster and .runtime: devices, TF_CONFIG, cluster probes, strategies."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segbalance.config import DistributeConfig
from segbalance.errors import UserError
from segbalance.train import cluster as D
from segbalance.train import runtime as R

sys.path.insert(0, str(Path(__file__).parent))
from _mw_worker import free_ports

HERE = Path(__file__).parent


# --------------------------------------------------------------------------- parsing
def test_parse_devices() -> None:
    assert R.parse_devices(None) is None
    assert R.parse_devices(" ") is None
    assert R.parse_devices("0,1") == ("gpu", [0, 1])
    assert R.parse_devices("3") == ("gpu", [3])
    assert R.parse_devices("cpu:2") == ("cpu", [0, 1])
    assert R.parse_devices("CPU:3") == ("cpu", [0, 1, 2])


@pytest.mark.parametrize("bad", ["cpu:0", "cpu:x", "gpu0", "0,,1", "0,0", "-1"])
def test_bad_devices_name_the_value(bad: str) -> None:
    with pytest.raises(UserError, match=bad.replace("-", r"\-") if bad != "0,0" else "twice"):
        R.parse_devices(bad)


def test_parse_address() -> None:
    assert D.parse_address("node1:2222") == ("node1", 2222)
    assert D.parse_address("[::1]:80") == ("::1", 80)
    for bad in ("node1", ":2222", "node1:0", "node1:70000", "node1:ab"):
        with pytest.raises(UserError, match="is not host:port"):
            D.parse_address(bad)


def test_tf_config_with_and_without_chief() -> None:
    only = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert D.cluster_from_tf_config(json.dumps(only)) == (["a:1", "b:2"], 1)
    chief = {
        "cluster": {"chief": ["c:1"], "worker": ["a:1", "b:2"]},
        "task": {"type": "worker", "index": 0},
    }
    assert D.cluster_from_tf_config(json.dumps(chief)) == (["c:1", "a:1", "b:2"], 1)
    chief["task"] = {"type": "chief", "index": 0}
    assert D.cluster_from_tf_config(json.dumps(chief)) == (["c:1", "a:1", "b:2"], 0)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("not json", "TF_CONFIG is not valid"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG is not valid"),
        ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "'ps'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}', "task"),
    ],
)
def test_bad_tf_config(raw: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        D.cluster_from_tf_config(raw)


def test_flags_build_tf_config_that_reads_back() -> None:
    raw = D.tf_config_for(["h1:2222", "h2:2222"], 1)
    assert D.cluster_from_tf_config(raw) == (["h1:2222", "h2:2222"], 1)


def test_resolve_cluster_sources_and_disagreement() -> None:
    flags = DistributeConfig(workers=["a:1", "b:2"], worker_index=1)
    env = {"TF_CONFIG": D.tf_config_for(["a:1", "b:2"], 1)}
    assert D.resolve_cluster(DistributeConfig(), {}) is None
    assert D.resolve_cluster(flags, {}) == (["a:1", "b:2"], 1)
    assert D.resolve_cluster(DistributeConfig(), env) == (["a:1", "b:2"], 1)
    assert D.resolve_cluster(flags, env) == (["a:1", "b:2"], 1)  # agreeing is fine
    other = {"TF_CONFIG": D.tf_config_for(["a:1", "c:3"], 1)}
    with pytest.raises(UserError, match="disagrees with --workers"):
        D.resolve_cluster(flags, other)
    with pytest.raises(UserError, match="disagrees with TF_CONFIG"):
        D.resolve_cluster(DistributeConfig(worker_index=0), env)
    with pytest.raises(UserError, match="--workers needs --worker-index"):
        D.resolve_cluster(DistributeConfig(workers=["a:1"]), {})
    with pytest.raises(UserError, match="--worker-index needs --workers"):
        D.resolve_cluster(DistributeConfig(worker_index=0), {})


def test_make_strategy_refuses_disagreeing_tf_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CONFIG", D.tf_config_for(["a:1", "b:2"], 0))
    with pytest.raises(UserError, match="disagrees"):
        R.make_strategy(DistributeConfig(workers=["a:1", "b:3"], worker_index=0))


# --------------------------------------------------------------------------- cluster check
def test_index_out_of_range_lists_valid_indices() -> None:
    with pytest.raises(UserError, match=r"--worker-index 2 is out of range .* valid: 0..1"):
        D.check_cluster(["127.0.0.1:1", "127.0.0.1:2"], 2, timeout_s=1)
    with pytest.raises(UserError, match="out of range"):
        D.check_cluster(["127.0.0.1:1"], -1, timeout_s=1)


def test_duplicate_and_malformed_addresses() -> None:
    with pytest.raises(UserError, match="lists an address twice"):
        D.check_cluster(["h:1", "h:1"], 0, timeout_s=1)
    with pytest.raises(UserError, match="'h1' is not host:port"):
        D.check_cluster(["h:1", "h1"], 0, timeout_s=1)


def test_unreachable_worker_fails_within_timeout_naming_its_address() -> None:
    mine, missing = free_ports(2)
    workers = [f"127.0.0.1:{mine}", f"127.0.0.1:{missing}"]
    began = time.monotonic()
    with pytest.raises(UserError) as err:
        D.check_cluster(workers, 0, timeout_s=0.5)  # the wait is all this test costs
    took = time.monotonic() - began
    assert f"worker 1 at 127.0.0.1:{missing} did not answer within 0.5 s" in str(err.value)
    assert took >= 0.5  # it waited the whole timeout (no upper bound: machines are shared)
    # Our own port was released: TensorFlow's server can take it next.
    with socket.socket() as s:
        s.bind(("127.0.0.1", mine))


def test_port_already_taken_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on .*:{port}"):
            D.check_cluster([f"127.0.0.1:{port}", "127.0.0.1:1"], 0, timeout_s=1)


def test_workers_started_in_any_order_find_each_other() -> None:
    """Each waits for the others while holding its own port open."""
    ports = free_ports(3)
    workers = [f"127.0.0.1:{p}" for p in ports]
    errors: list[BaseException] = []
    servers: list[socket.socket] = []

    def run(index: int, delay: float) -> None:
        time.sleep(delay)
        try:
            D.check_cluster(workers, index, timeout_s=10)
        except BaseException as err:  # reported below
            errors.append(err)
            return
        # What TensorFlow's server does next: listen on the port the check released.
        server = socket.create_server(("127.0.0.1", ports[index]))
        servers.append(server)

    threads = [threading.Thread(target=run, args=(i, 0.4 * (2 - i))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    for server in servers:
        server.close()
    assert not errors, errors
    assert len(servers) == 3


# --------------------------------------------------------------------------- strategy facts
def test_default_strategy_is_single_worker_chief(tmp_path: Path) -> None:
    runtime = R.make_runtime(DistributeConfig())
    assert runtime.replicas == 1 and runtime.chief
    assert (runtime.worker_index, runtime.num_workers) == (0, 1)
    assert R.worker_info(runtime.strategy) == (0, 1)
    assert runtime.checkpoint_dir(tmp_path) == tmp_path
    runtime.cleanup_checkpoint_dir(tmp_path)  # the chief's dir is kept
    assert tmp_path.is_dir()
    runtime.check_same_on_all_workers("epoch and step", [1, 2])  # one worker: no-op


def test_missing_gpu_lists_visible_gpus() -> None:
    import tensorflow as tf

    count = len(tf.config.list_physical_devices("GPU"))
    with pytest.raises(UserError, match=rf"asks for GPU {count} but the visible GPUs are"):
        R.make_strategy(DistributeConfig(devices=f"{count}"))


def test_cpu_devices_cannot_be_combined_with_workers() -> None:
    with pytest.raises(UserError, match="cannot be combined with --workers"):
        R.make_strategy(DistributeConfig(devices="cpu:2", workers=["a:1", "b:2"], worker_index=0))


@given(replicas=st.integers(1, 16), batch=st.integers(1, 256))
def test_a_batch_must_split_evenly_over_the_replicas(replicas: int, batch: int) -> None:
    runtime = R.Runtime(SimpleNamespace(num_replicas_in_sync=replicas))
    if batch % replicas == 0:
        runtime.check_batch("train.batch_size", batch)
    else:
        with pytest.raises(UserError, match=f"train.batch_size={batch} is not divisible by"):
            runtime.check_batch("train.batch_size", batch)


def test_worker_paths_follow_the_multi_worker_rules(tmp_path: Path) -> None:
    """A worker's dir is a temp dir inside the chief's; cleanup removes it only for workers."""

    class Resolver:
        task_type, task_id = "worker", 1

        def cluster_spec(self):
            return SimpleNamespace(as_dict=lambda: {"worker": ["a:1", "b:2"]})

    extended = SimpleNamespace(_in_multi_worker_mode=lambda: True)
    worker = SimpleNamespace(extended=extended, cluster_resolver=Resolver())
    assert R.worker_info(worker) == (1, 2)
    runtime = R.Runtime(worker, 1, 2)
    assert not runtime.chief
    path = runtime.checkpoint_dir(tmp_path)
    assert path == tmp_path / ".worker-1-tmp"
    path.mkdir()
    (path / "ckpt-1.index").write_text("x")
    runtime.cleanup_checkpoint_dir(path)
    assert not path.exists() and tmp_path.is_dir()
    runtime.cleanup_checkpoint_dir(tmp_path)  # never the shared dir itself
    assert tmp_path.is_dir()
