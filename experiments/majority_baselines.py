"""The majority baseline of the application tables, as rows the report puts beside a sweep's
arms: the training split's most common answer, given to every test example.

  python experiments/majority_baselines.py --out=experiments/fpb_methods/baselines.csv
  python experiments/majority_baselines.py --tasks=sentiment,intent_and_slot --axis=run \
      --out=experiments/recipes/baselines.csv

sentiment: the most common label; intent_and_slot: the most common intent, with `Slots:
None`; each scored by the task's own metric (configs/common.py REFERENCE_TASKS), so
the row has the columns the arms have. SQuAD has no majority answer (each question has its
own context), so it has none. `--axis` names the sweep axis the row's label goes in (the
report lines baselines up with arms by the sweep's axes). The frozen model's zero-shot and
in-context rows are arms of the sweeps (no training; the same predictor and metrics as the
trained methods). Prints one JSON line per task.
"""

from __future__ import annotations

import argparse
import collections
import json

import pandas as pd

from ptlearn.configs import common
from ptlearn.data.jsonl import read_jsonl
from ptlearn.metrics import parse_intent_and_slots, task_metrics


def majority_row(task: str, data: str, axis: str, label: str) -> dict:
    """The report row (`axis` = `label`) of `task`'s majority answer on `data`/test.jsonl."""
    spec = common.REFERENCE_TASKS[task]
    field = spec["answer_field"]
    train = read_jsonl(f"{data}/train.jsonl")
    test = read_jsonl(f"{data}/test.jsonl")
    if spec["metric"] == "intent_slot":  # the most common intent, with no slots
        intents = collections.Counter(parse_intent_and_slots(r[field])[0] for r in train)
        majority = f"\nIntent: {intents.most_common(1)[0][0]}\nSlots: None"
    else:
        majority = collections.Counter(r[field] for r in train).most_common(1)[0][0]
    metrics = task_metrics(
        spec["metric"], [majority] * len(test), test, answer_field=field, taskname=task
    )
    shown = " ".join(majority.split())
    return {
        "arm": f"{label} ({shown})",
        axis: label,
        "status": "finished",
        "steps": 0,
        "wall_time_min": 0.0,
        "trainable_parameters": 0,
        **{f"test/test_{task}/{k}": v for k, v in metrics.items() if k != "n"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--tasks", default="sentiment", help="comma list: sentiment, intent_and_slot"
    )
    parser.add_argument(
        "--data", default=None, help="the jsonl folder (one task; default: its own)"
    )
    parser.add_argument("--axis", default="method", help="the sweep axis that holds the label")
    parser.add_argument("--out", default=None, help="write the rows as CSV for report --baselines")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in ("sentiment", "intent_and_slot")]
    if unknown or (args.data and len(tasks) > 1):
        parser.error("--tasks: sentiment and/or intent_and_slot; --data goes with one task")
    rows = [
        # One task: the row is plain `majority` (fpb_methods' tables); several: one per task.
        majority_row(
            t,
            args.data or common.REFERENCE_TASKS[t]["data"],
            args.axis,
            "majority" if len(tasks) == 1 else f"majority-{t}",
        )
        for t in tasks
    ]
    if args.out:
        pd.DataFrame(rows).to_csv(args.out, index=False)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
