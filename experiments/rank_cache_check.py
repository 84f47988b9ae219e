"""Rank classification with each record's prompt run once into a KV cache and every label's
answer on it, against every label's whole example (answers.label_nlls, share_prompts on / off):
a shipped config's validation records, the tables its training starts from, the numerics it
would train with on this CPU; both compiled first, then timed A B A B. Prints one JSON line
(experiments/results/rank_cache_check.jsonl).

  python -m ptlearn.data.prepare financial_phrasebank --raw_dir=../shared/data \\
      --out_dir=data/fpb --agreement=all
  python experiments/rank_cache_check.py sentiment 2 >> experiments/results/rank_cache_check.jsonl

Arguments: a config (name or file) and the timed rounds per variant.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np

from ptlearn import answers, config_lib, evaluation, machine, masking, train_state, training


def main(config_name: str, rounds: int) -> dict:
    c = config_lib.load_config(config_name)
    s = training.setup(c)
    state, frozen, _, _ = train_state.init_state(s, c.trainer.max_steps)
    params = masking.merge(state["trainable"], frozen)
    lm = evaluation.prompted_lm(s, params["lm"], evaluation.frozen_tables(s, params["prompt"]))
    records = s.val_records
    size = int(c.inference.batch_size)

    def scores(share: bool) -> tuple[list[dict], float]:
        start = time.perf_counter()
        result = answers.label_nlls(lm, records, s.label_sets, batch_size=size, share_prompts=share)
        return result, time.perf_counter() - start

    variants = {"shared_prompt": True, "whole_examples": False}
    first = {name: scores(share) for name, share in variants.items()}  # compiles every shape
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, share in variants.items():
            times[name].append(scores(share)[1])
    shared, whole = first["shared_prompt"][0], first["whole_examples"][0]
    gaps = [abs(a[k] - b[k]) for a, b in zip(shared, whole, strict=True) for k in a]
    return {
        "config": config_name,
        "machine": machine.cpu_description(),
        "numerics": s.numerics,
        "records": len(records),
        "labels": {t: len(v) for t, v in s.label_sets.items()},
        "batch_size": size,
        "rounds": rounds,
        **{f"{n}_first_s": round(first[n][1], 2) for n in variants},
        **{f"{n}_median_s": round(statistics.median(t), 2) for n, t in times.items()},
        "speedup": round(
            statistics.median(times["whole_examples"]) / statistics.median(times["shared_prompt"]),
            2,
        ),
        "same_ranked_label": sum(
            min(a, key=a.get) == min(b, key=b.get) for a, b in zip(shared, whole, strict=True)
        ),
        "max_abs_nll_gap": float(np.max(gaps)),
        "max_total_nll": float(max(max(a.values()) for a in whole)),
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        sys.exit("usage: python experiments/rank_cache_check.py CONFIG ROUNDS")
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
