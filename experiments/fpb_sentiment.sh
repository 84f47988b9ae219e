#!/usr/bin/env bash
# The main job: prepare Financial PhraseBank (AllAgree), p-tune the default model on it,
# predict the test split and print the accuracy (last line, JSON).
#
#   bash experiments/fpb_ptuning.sh [RAW_DATA_DIR] [extra --config.* flags for training]
#
# RAW_DATA_DIR holds financial_phrasebank/ (default ../shared/data). PYTHON, DATA_DIR and
# WORKDIR may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
raw=${1:-../shared/data}
shift || true
python=${PYTHON:-.venv/bin/python}
data=${DATA_DIR:-data/fpb}
workdir=${WORKDIR:-runs/sentiment_ptuning}

"$python" -m ptlearn.data.prepare financial_phrasebank --raw_dir="$raw" --out_dir="$data"
"$python" -m ptlearn.train --config="configs/sentiment_ptuning.py:data=$data" \
  --workdir="$workdir" "$@"
"$python" -m ptlearn.predict --prompt_model="$workdir/prompt_model" \
  --data="$data/test.jsonl" --pred_file="$workdir/test_predictions.txt"
