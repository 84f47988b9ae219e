"""`python -m ptlearn.bench --data=F.jsonl --config=...`: real data through the real input
pipeline (training.Batches, length buckets) against the same steps padded to --seq.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import jax
import numpy as np

from ptlearn import distributed, sharding, train_state, training
from ptlearn.bench import (
    DTYPES,
    REMAT,
    TIME_KEYS,
    Options,
    encoder_text,
    header,
    param_summary,
    peak_rss_mb,
)


def pad_time_axis(batch: dict[str, np.ndarray], length: int, pad_id: int) -> dict[str, Any]:
    """Right-pads a collated batch's [..., T] arrays to [..., length] as collate pads them."""
    fill = {"ids": pad_id, "virtual_index": -1}
    out = dict(batch)
    for key in TIME_KEYS:
        extra = length - batch[key].shape[-1]
        widths = [(0, 0)] * (batch[key].ndim - 1) + [(0, extra)]
        out[key] = np.pad(batch[key], widths, constant_values=fill.get(key, 0))
    return out


def timed_data_step(train_step, holder, frozen, fetch, position, record) -> None:
    """One step at `position` (epoch, index), its batch fetched inside the timed region:
    holder["state"] advances; record's "times", "shapes", "real" and "padded" grow."""
    start = time.perf_counter()
    batch = fetch(*position)
    holder["state"], stats = train_step(holder["state"], frozen, batch)
    jax.block_until_ready((holder["state"], stats))
    record["times"].append(time.perf_counter() - start)
    record["shapes"].add((batch["ids"].shape, batch["target_index"].shape))
    record["real"] += float(stats["real_tokens"])
    record["padded"] += float(stats["padded_tokens"])


def bench_data(args: Options) -> dict[str, Any]:
    """`--steps` steps of real data (training.Batches, length buckets) and the same steps with
    every batch padded to --seq: a warm-up pass of each (compiling its shapes), then both
    timed, alternating step by step."""
    config = copy.deepcopy(args.config)
    with config.unlocked():
        m = config.model
        if args.model is not None:
            m.language_model_path = args.model
        m.data.train_ds = (args.data,)
        m.data.validation_ds = ()
        m.data.test_ds = ()
        m.global_batch_size = m.micro_batch_size = args.batch
        config.trainer.precision = DTYPES[args.dtype]
        # The schedule only needs to be valid: longer than its warm-up, covering all 4 passes.
        sched = m.optim.sched
        config.trainer.max_steps = sched.warmup_steps + sched.constant_steps + 4 * args.steps
    config.model.frozen_weights_dtype = args.frozen_dtype
    # As --dtype: the flag, not the config's auto, so the JSON line's "remat" is what ran.
    config.model.activations_checkpoint_granularity = REMAT[args.remat]
    s = training.setup(config)
    load_peak = peak_rss_mb()
    state, frozen, tx, _ = train_state.init_state(s, config.trainer.max_steps)
    batches = training.Batches(s)
    positions = [divmod(i, batches.per_epoch) for i in range(args.steps)]
    pad_id = s.loaded.tokenizer.fill_id

    def padded_fetch(epoch: int, index: int) -> dict[str, Any]:
        host = distributed.to_host(batches.get(epoch, index))
        length = max(args.seq, host["ids"].shape[-1])
        return jax.device_put(pad_time_axis(host, length, pad_id), batches.batch_sharding)

    summary = param_summary(state["trainable"], frozen, s.model.config.param_dtype)
    holder = {"state": state}
    fetchers = {"bucketed": batches.get, "padded": padded_fetch}
    passes = {  # per variant: (warm-up record, timed record)
        name: tuple({"times": [], "shapes": set(), "real": 0.0, "padded": 0.0} for _ in range(2))
        for name in fetchers
    }
    with sharding.activate(s.mesh, s.rules):
        train_step = training.make_train_step(s, tx)
        for name, fetch in fetchers.items():  # the warm-up passes compile every shape
            for position in positions:
                timed_data_step(train_step, holder, frozen, fetch, position, passes[name][0])
        # Timed steps alternate the variants, so drifting machine load hits both alike.
        for position in positions:
            for name, fetch in fetchers.items():
                timed_data_step(train_step, holder, frozen, fetch, position, passes[name][1])
    result = header(args, "data", str(m.language_model_path))
    result["virtual_tokens"] = max(t.total_virtual_tokens for t in s.templates.values())
    result.update(
        {
            "data": args.data,
            "tasks": list(m.new_tasks),
            "style": m.virtual_prompt_style,
            "encoder": encoder_text(s),
            **summary,
        }
    )
    for name, suffix in (("bucketed", ""), ("padded", "_padded_to_seq")):
        warm, timed = passes[name]
        total = sum(timed["times"])
        result.update(
            {
                f"median_s_per_step{suffix}": round(statistics.median(timed["times"]), 6),
                f"tokens_per_s{suffix}": round(timed["padded"] / total, 1),
                f"real_tokens_per_s{suffix}": round(timed["real"] / total, 1),
                f"distinct_shapes{suffix}": len(timed["shapes"]),
                f"lengths{suffix}": sorted({shape[0][-1] for shape in timed["shapes"]}),
                # First pass minus second: what compiling each distinct shape cost.
                f"compile_s{suffix}": round(max(sum(warm["times"]) - total, 0.0), 2),
            }
        )
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["peak_rss_after_load_mb"] = round(load_peak, 1)
    return result
