"""ptlearn.plan: the real train step compiled over abstract parameters. Its per-device bytes
match a real run's arrays, and a 20B model at TP=4 is split the Megatron way."""

import jax
import numpy as np
import pytest
from tiny_model import tiny_config, write_tiny_data, write_tiny_model

from ptlearn import config_lib, gpt, plan, sharding, training
from ptlearn.data import batching


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_plan")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def _on_device_0(tree) -> int:
    """Bytes of a tree's arrays that device 0 holds."""
    device = jax.devices()[0]
    return sum(
        shard.data.nbytes
        for leaf in jax.tree_util.tree_leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


@pytest.mark.parametrize("style", ["p-tuning", "prefix-tuning"])
def test_a_plan_holds_the_bytes_a_real_run_holds(tiny, style):
    """TP=2 on 2 of the simulated devices: parameters (frozen, trainable) and optimizer state
    per device exactly as a real run's arrays; the step's temporaries at least the real step's
    (the plan compiles a full-length batch, a run its bucket) and within 4x of it."""
    model, data = tiny
    config = tiny_config(model, data, style=style)
    config.trainer.devices = 2
    config.model.tensor_model_parallel_size = 2
    planned = plan.build(config, str(model))

    s = training.setup(config)
    state, frozen, tx, _ = training.init_state(s, 4)
    assert planned.frozen_param_bytes == _on_device_0(frozen)
    assert planned.trainable_param_bytes == _on_device_0(state["trainable"])
    assert planned.optimizer_bytes == _on_device_0(state["opt_state"])
    host = batching.collate(
        s.train_examples[: config.model.global_batch_size],
        {t: i for i, t in enumerate(s.task_names)},
        batch_size=config.model.global_batch_size,
        max_length=config.model.max_seq_length,
        pad_id=0,
    )
    micro = batching.split_micro_batches(host, s.accumulation)
    batch = jax.device_put(micro, sharding.batch_sharding(s.mesh, s.rules, micro_batched=True))
    with sharding.activate(s.mesh, s.rules):
        real = training.make_train_step(s, tx).lower(state, frozen, batch).compile()
    real_temp = real.memory_analysis().temp_size_in_bytes
    assert real_temp <= planned.temp_bytes <= 4 * real_temp


def test_gpt_20b_at_tp4_is_split_the_megatron_way():
    config = config_lib.load_config("sentiment_prefix_tuning")
    with config.unlocked():
        config.trainer.devices = 4
        config.model.tensor_model_parallel_size = 4
    planned = plan.build(config, "gpt-20b")
    specs = planned.specs
    # Column-parallel (heads, FFN hidden split), row-parallel (their inputs split), and the
    # vocabulary-parallel embedding; norms and biases of row-parallel outputs replicated.
    assert specs["lm/layers/attn/query/kernel"] == "P(None, 'fsdp', 'model', None)"
    assert specs["lm/layers/attn/out/kernel"] == "P(None, 'model', None, 'fsdp')"
    assert specs["lm/layers/mlp/up/kernel"] == "P(None, 'fsdp', 'model')"
    assert specs["lm/layers/mlp/down/kernel"] == "P(None, 'model', 'fsdp')"
    assert specs["lm/embed/embedding"] == "P('model', 'fsdp')"
    # 20.6e9 parameters in bf16 over 4 devices.
    shapes = jax.eval_shape(lambda: gpt.init_params(gpt.VARIANTS["gpt-20b"], jax.random.key(0)))
    params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    assert planned.frozen_param_bytes == pytest.approx(2 * params / 4, rel=0.01)
    assert planned.frozen_dtype == "bfloat16"


def test_the_experiment_table_reproduces_from_its_commands():
    """experiments/plan_nemo_sizes: the 345M row's command prints that row's numbers."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    folder = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "plan_nemo_sizes"
    row = json.loads((folder / "results.jsonl").read_text().splitlines()[0])
    proc = subprocess.run(
        [sys.executable, *row["command"].split()[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "XLA_FLAGS": ""},
        cwd=folder.parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("frozen_param_bytes", "trainable_param_bytes", "optimizer_bytes"):
        assert result[key] == row[key], key
    # Temporaries come from XLA's buffer assignment, which another CPU's target may shift.
    assert result["total_bytes"] == pytest.approx(row["total_bytes"], rel=0.1)
    assert {a: v["fits"] for a, v in result["fits"].items()} == {
        a: v["fits"] for a, v in row["fits"].items()
    }


def test_the_gpu_check_runs_the_real_step_on_cpu():
    """experiments/gpu_check.sh's smoke form: the timed real step and its MFU fields."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        ["bash", str(root / "experiments" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PYTHON": sys.executable,
            "VARIANTS": "test",
            "CONFIGS": "sentiment",
            "STEPS": "2",
            "XLA_FLAGS": "",
        },
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [(r["config"], r["remat"]) for r in rows] == [
        ("sentiment", "none"),
        ("sentiment", "full"),
    ]
    for result in rows:
        assert result["variant"] == "test" and result["median_s"] > 0
        assert 0 < result["mfu_4n"] < result["mfu_6n"]
        assert result["plan_total_gib"] > 0
    # Recomputing the forward costs FLOPs that the step's own count includes.
    assert rows[1]["flops_per_step"] > rows[0]["flops_per_step"]
