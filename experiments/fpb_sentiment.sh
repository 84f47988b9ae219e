#!/usr/bin/env bash
# The main job: prepare Financial PhraseBank (AllAgree), train the FPB recipe
# (configs/sentiment.py: deep prompts on the default model), predict the test split and print
# its metrics with the wall times (last line, JSON).
#
#   bash experiments/fpb_sentiment.sh [RAW_DATA_DIR] [extra --config.* flags for training]
#
# RAW_DATA_DIR holds financial_phrasebank/ (default ../shared/data; without it the converter
# says where the data set comes from). PYTHON, DATA_DIR and WORKDIR may be set in the
# environment.
set -euo pipefail
cd "$(dirname "$0")/.."
raw=${1:-../shared/data}
shift || true
python=${PYTHON:-.venv/bin/python}
data=${DATA_DIR:-data/fpb}
workdir=${WORKDIR:-runs/sentiment}
started=$(date +%s)

"$python" -m ptlearn.data.prepare financial_phrasebank --raw_dir="$raw" --out_dir="$data"
"$python" -m ptlearn.train --config="configs/sentiment.py:data=$data" \
  --workdir="$workdir" "$@"
metrics=$("$python" -m ptlearn.predict --prompt_model="$workdir/prompt_model" \
  --data="$data/test.jsonl" --pred_file="$workdir/test_predictions.txt" | tail -n 1)
"$python" - "$metrics" "$workdir/result.json" "$started" <<'PY'
import json, sys, time
metrics, result, started = json.loads(sys.argv[1]), json.load(open(sys.argv[2])), float(sys.argv[3])
metrics["train_wall_time_s"] = round(result["wall_time_s"], 1)
metrics["wall_time_s"] = round(time.time() - started, 1)
print(json.dumps(metrics))
PY
