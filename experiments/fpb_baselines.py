"""The majority-class baseline of the FPB tables, as a row the report puts beside a sweep's arms.

  python experiments/fpb_baselines.py --data=data/fpb --out=experiments/fpb_methods/baselines.csv

The majority label is counted on the training split and scored on the test split. The frozen
model's zero-shot and in-context rows are arms of experiments/fpb_methods (no training, so
they run through the same predictor and metrics as the trained methods). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import json

import pandas as pd

from ptlearn.data.jsonl import read_jsonl
from ptlearn.metrics import accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/fpb")
    parser.add_argument("--out", default=None, help="write the row as CSV for report --baselines")
    args = parser.parse_args()
    train = read_jsonl(f"{args.data}/train.jsonl")
    test = read_jsonl(f"{args.data}/test.jsonl")
    majority = collections.Counter(r["label"] for r in train).most_common(1)[0][0]
    test_accuracy = accuracy([majority] * len(test), [r["label"] for r in test])
    row = {
        "arm": f"majority ({majority})",
        "method": "majority",
        "status": "finished",
        "steps": 0,
        "wall_time_min": 0.0,
        "trainable_parameters": 0,
        "test/test_sentiment/accuracy": test_accuracy,
    }
    if args.out:
        pd.DataFrame([row]).to_csv(args.out, index=False)
    print(json.dumps({"n_test": len(test), "majority_class": majority, **row}))


if __name__ == "__main__":
    main()
