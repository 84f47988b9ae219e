"""Multi-process plumbing: config checks, batch rows per process, and a real 2-process run."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ptlearn import distributed, sharding
from ptlearn.errors import ConfigError

WORKER = pathlib.Path(__file__).with_name("distributed_worker.py")


def test_process_batch_slice_arithmetic():
    assert distributed.process_batch_slice(16, process_index=0, process_count=4) == slice(0, 4)
    assert distributed.process_batch_slice(16, process_index=3, process_count=4) == slice(12, 16)
    assert distributed.process_batch_slice(6, process_index=1, process_count=2) == slice(3, 6)
    # One process reads everything.
    assert distributed.process_batch_slice(8) == slice(0, 8)
    with pytest.raises(ConfigError, match="model.global_batch_size=10 .* 4 processes"):
        distributed.process_batch_slice(10, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="process_index=4"):
        distributed.process_batch_slice(8, process_index=4, process_count=4)


def test_process_batch_slice_from_sharding_single_process():
    mesh = sharding.make_mesh(2)
    batch_sharding = sharding.batch_sharding(mesh)
    assert distributed.process_batch_slice(8, sharding=batch_sharding) == slice(0, 8)
    with pytest.raises(ConfigError, match="model.global_batch_size=6"):
        distributed.process_batch_slice(6, sharding=batch_sharding)


def test_host_local_to_global_single_process():
    mesh = sharding.make_mesh(4)
    local = {"ids": np.arange(6).reshape(2, 3), "weight": np.ones(2, np.float32)}
    out = distributed.host_local_to_global(local, mesh)
    assert out["ids"].sharding == sharding.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(out["ids"]), local["ids"])


def test_single_process_needs_no_initialisation():
    cfg = distributed.distributed_config()
    assert distributed.initialize(cfg) is False
    assert distributed.is_writer()


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"cpu_collectives": "nccl"}, "distributed.cpu_collectives='nccl'"),
        ({"num_processes": 0}, "distributed.num_processes=0"),
        ({"num_processes": 2}, "distributed.coordinator_address=''"),
        (
            {"num_processes": 2, "coordinator_address": "127.0.0.1:1", "process_id": 2},
            "distributed.process_id=2",
        ),
    ],
)
def test_config_errors_name_the_key(changes, match):
    cfg = distributed.distributed_config()
    cfg.update(changes)
    with pytest.raises(ConfigError, match=match):
        distributed.initialize(cfg)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_available() -> bool:
    from jax._src.lib import _jax

    return hasattr(_jax, "make_gloo_tcp_collectives")


def test_two_processes_on_localhost():
    if not _gloo_available():
        pytest.skip(f"jaxlib {jax.__version__} has no gloo CPU collectives")
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(port), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    batch = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    weight = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    for i, result in enumerate(outputs):
        assert result["process_index"] == i
        assert result["process_count"] == 2 and result["device_count"] == 4
        assert result["writer"] == (i == 0)
        assert result["rows"] == result["rows_from_sharding"] == [4 * i, 4 * i + 4]
        assert result["global_shape"] == [8, 3]
        assert result["total"] == result["psum"] == float(batch.sum())
        np.testing.assert_array_equal(np.asarray(result["product"]), batch @ weight)
        assert result["weight_shard"] == [3, 2]
        assert result["stacked_shape"] == [2, 4, 3]
        assert result["per_micro"] == batch.reshape(2, 4, 3).sum(axis=(1, 2)).tolist()
