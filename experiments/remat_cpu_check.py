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
import time

import jax

from ptlearn import config_lib, machine, sharding, train_state, training
from ptlearn.bench import peak_rss_mb

VARIANTS = {"full": "full", "none": ""}  # name -> model.activations_checkpoint_granularity


def variant(config_name: str, remat: str) -> dict:
    """The config's training setup in float32 with `remat`: its state, frozen weights,
    jitted step and batches."""
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
    return dict(s=s, state=state, frozen=frozen, step=step, batches=training.Batches(s))


def timed_step(v: dict, position: tuple[int, int]) -> tuple[float, tuple[int, ...]]:
    """(seconds, ids shape) of one train step of variant `v` on the batch at `position`."""
    batch = v["batches"].get(*position)
    start = time.perf_counter()
    with sharding.activate(v["s"].mesh, v["s"].rules):
        v["state"], stats = v["step"](v["state"], v["frozen"], batch)
        jax.block_until_ready((v["state"], stats))
    return time.perf_counter() - start, tuple(batch["ids"].shape)


def main(config_name: str, steps: int) -> dict:
    variants = {name: variant(config_name, remat) for name, remat in VARIANTS.items()}
    per_epoch = variants["full"]["batches"].per_epoch
    positions = [divmod(i, per_epoch) for i in range(steps)]
    shapes = {timed_step(v, p)[1] for v in variants.values() for p in positions}  # compiles
    times = {name: [] for name in variants}
    for p in positions:  # alternating, so drifting machine load hits both alike
        for name, v in variants.items():
            times[name].append(timed_step(v, p)[0])
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
