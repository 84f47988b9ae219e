"""Which remat is fastest for a shipped config's real train step on this CPU: the config's own
batches (length buckets), float32, every block recomputed in the backward ("full") against
stored activations (none), both set up in one process and timed step by step A B A B on the
same batches after a warm-up pass that compiles every shape. ptlearn/numerics.py's remat
choice cites its output (experiments/results/remat_cpu_check.jsonl).

  python -m ptlearn.data.prepare assistant --raw_dir=../shared/data --out_dir=data/assistant
  python experiments/remat_cpu_check.py intent_slot 8 >> experiments/results/remat_cpu_check.jsonl
  python experiments/remat_cpu_check.py squad 5 >> experiments/results/remat_cpu_check.jsonl

Arguments: a config (name or file) and the steps timed per variant. Prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys

from ptlearn import bench_data, config_lib, machine, sharding, train_state, training
from ptlearn.bench import peak_rss_mb

VARIANTS = {"full": "full", "none": ""}  # name -> model.activations_checkpoint_granularity


def variant(config_name: str, remat: str) -> dict:
    """The config's training setup in float32 with `remat`: its state holder, frozen weights,
    jitted step, batches and a bench_data.timed_data_step record."""
    c = config_lib.load_config(config_name)
    with c.unlocked():
        c.trainer.precision = "32"
        c.model.frozen_weights_dtype = "float32"
        c.model.activations_checkpoint_granularity = remat
        c.model.data.validation_ds = c.model.data.test_ds = ()
    s = training.setup(c)
    state, frozen, tx, _ = train_state.init_state(s, c.trainer.max_steps)
    with sharding.activate(s.mesh, s.rules):
        step = training.make_train_step(s, tx)
    return dict(
        s=s,
        holder={"state": state},
        frozen=frozen,
        step=step,
        batches=training.Batches(s),
        record={"times": [], "shapes": set(), "real": 0.0, "padded": 0.0},
    )


def run_step(v: dict, position: tuple[int, int]) -> None:
    """One timed train step of variant `v` on the batch at `position`, into its record."""
    with sharding.activate(v["s"].mesh, v["s"].rules):
        bench_data.timed_data_step(
            v["step"], v["holder"], v["frozen"], v["batches"].get, position, v["record"]
        )


def main(config_name: str, steps: int) -> dict:
    variants = {name: variant(config_name, remat) for name, remat in VARIANTS.items()}
    per_epoch = variants["full"]["batches"].per_epoch
    positions = [divmod(i, per_epoch) for i in range(steps)]
    for v in variants.values():  # the warm-up pass compiles every shape
        for p in positions:
            run_step(v, p)
    shapes = variants["full"]["record"]["shapes"]
    for v in variants.values():
        v["record"]["times"].clear()
    for p in positions:  # alternating, so drifting machine load hits both alike
        for v in variants.values():
            run_step(v, p)
    times = {name: v["record"]["times"] for name, v in variants.items()}
    return {
        "config": config_name,
        "machine": machine.cpu_description(),
        "precision": "32",
        "steps": steps,
        "shapes": sorted(shapes),
        **{f"{name}_median_s": round(statistics.median(t), 3) for name, t in times.items()},
        **{f"{name}_total_s": round(sum(t), 2) for name, t in times.items()},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        sys.exit("usage: python experiments/remat_cpu_check.py CONFIG STEPS")
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
