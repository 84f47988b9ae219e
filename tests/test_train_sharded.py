"""Training on a mesh of simulated devices gives the single-device losses; checkpoints move
between mesh shapes; two processes on 127.0.0.1 train like one process with their devices."""

import json
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_train import _write_config
from tiny_model import tiny_config, tiny_subprocess_env, write_tiny_data, write_tiny_model

from ptlearn import training


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sharded")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def _config(tiny, devices=1, tp=1, fsdp=1, micro=8, steps=4):
    config = tiny_config(*tiny)
    config.trainer.devices = devices
    config.model.tensor_model_parallel_size = tp
    config.mesh.fsdp = fsdp
    config.model.micro_batch_size = micro
    config.trainer.max_steps = steps
    config.trainer.val_check_interval = 2
    config.exp_manager.checkpoint_callback_params.save_top_k = 5
    config.model.data.validation_metric_examples = 0
    return config


def _losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("single")
    training.train_and_evaluate(_config(tiny), str(workdir))
    return workdir


@pytest.mark.parametrize(
    "tp, fsdp, micro, sequence_parallel",
    [(2, 1, 2, False), (4, 1, 4, False), (2, 2, 1, False), (2, 1, 2, True)],
    ids=["tp2-dp4", "tp4-dp2", "fsdp2-tp2-dp2-accumulate2", "tp2-dp4-sequence-parallel"],
)
def test_mesh_losses_match_single_device(
    tiny, single, tmp_path, tp, fsdp, micro, sequence_parallel
):
    config = _config(tiny, devices=8, tp=tp, fsdp=fsdp, micro=micro)
    config.model.sequence_parallel = sequence_parallel
    s = training.setup(config)
    state, frozen, _, _ = training.init_state(s, 4)
    query = frozen["lm"]["layers"]["attn"]["query"]["kernel"]
    assert "model" in str(query.sharding.spec)
    assert len(query.sharding.device_set) == 8
    training.train_and_evaluate(config, str(tmp_path))
    expected, got = _losses(single), _losses(tmp_path)
    assert sorted(got) == [1, 2, 3, 4]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-4)


def test_checkpoint_from_a_mesh_resumes_on_one_device(tiny, single, tmp_path):
    meshed = tmp_path / "meshed"
    training.train_and_evaluate(_config(tiny, devices=8, tp=2, micro=2), str(meshed))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints" / "last").mkdir(parents=True)
    shutil.copytree(meshed / "checkpoints" / "best" / "2", resumed / "checkpoints" / "last" / "2")
    training.train_and_evaluate(_config(tiny), str(resumed))
    got, expected = _losses(resumed), _losses(single)
    assert sorted(got) == [3, 4]  # resumed after step 2
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-4)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_their_devices(tiny, tmp_path):
    config_file = _write_config(tmp_path, *tiny)
    common = [
        sys.executable,
        "-m",
        "ptlearn.train",
        f"--config={config_file}",
        "--config.trainer.max_steps=5",
        "--config.trainer.val_check_interval=5",
        "--config.trainer.log_every_n_steps=1",
        "--config.trainer.devices=-1",
        "--config.model.tensor_model_parallel_size=2",
        "--config.model.micro_batch_size=4",
        "--config.model.data.validation_metric_examples=0",
    ]

    one = subprocess.run(
        common + [f"--workdir={tmp_path / 'one'}"],
        env=tiny_subprocess_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    procs = [
        subprocess.Popen(
            common
            + [
                f"--workdir={tmp_path / 'two'}",
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
            ],
            env=tiny_subprocess_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    expected, got = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(got) == [1, 2, 3, 4, 5]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-4)
    assert np.isfinite(list(got.values())).all()


def test_sharded_predictions_equal_single_device(tiny, single):
    from ptlearn import predict, sharding
    from ptlearn.data.jsonl import iter_numbered_jsonl

    records = list(iter_numbered_jsonl(tiny[1]["test"]))
    inference = tiny_config(*tiny).inference
    alone, _ = predict.load_prompted_lm(str(single / "prompt_model"))
    expected = predict.predict_records(alone, records, inference)
    mesh = sharding.make_mesh(2, 1, sharding.select_devices(-1))
    rules = sharding.rules_from_config(())
    meshed, _ = predict.load_prompted_lm(str(single / "prompt_model"), mesh=mesh, rules=rules)
    assert "model" in str(meshed.lm_params["embed"]["embedding"].sharding.spec)
    with sharding.activate(mesh, rules):
        assert predict.predict_records(meshed, records, inference) == expected
