"""The numerics a run uses where its config says "auto": the fastest settings that kept
accuracy, per kind of device (the shipped configs say auto; `trainer.precision=32` etc. stay).

- `trainer.precision=auto`: "bf16" (bf16 matmul inputs, float32 accumulation, float32 residual
  stream and prompts) on accelerators and on CPUs with bf16 hardware (AVX512-BF16 or AMX-BF16);
  "32" elsewhere, with a one-line notice, since XLA:CPU then emulates the bf16 products.
  FPB with the bf16 path: 90.1% test accuracy against 88.5% in float32, at 2.06 against 0.64
  steps/s (experiments/bench_vs_peft.md).
- `model.frozen_weights_dtype=auto`: bfloat16 storage when the matmuls take bf16 inputs (the
  weights are read as bf16 anyway; half the memory), else float32.
- `model.activations_checkpoint_granularity=auto`: "full" (recompute each block in the
  backward) on every device, since it was the faster on each one measured. On CPU: 1.17-1.30
  against 1.45-1.51 s per step and 1.3 against 2.65 GB (experiments/bench_vs_peft.md); in
  float32 on an AVX2-only EPYC none gains 13% on intent_slot's short rows (4.49 vs 3.92 s)
  and nothing on squad's long ones (10.84 vs 10.05; 55.7 vs 55.0 s in all;
  experiments/results/remat_cpu_check.jsonl), where its stored activations grow with the row
  length. On an H200 (bf16, the default model, experiments/results/gpu_check_h200.jsonl):
  13.2 against 14.7 ms per step for p-tuning and 13.9 against 14.9 ms for the deep-prompt
  recipe, with 0.5 against 3.3 GiB planned: a 135M model's step is bound by launches and
  memory traffic, not by the recomputed FLOPs. Billion-parameter models on GPUs, whose step is
  FLOP-bound, are unmeasured: there none saves the third of the FLOPs that full recomputes,
  where its memory fits (`python -m ptlearn.plan` shows both; gpu_check.sh times both).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import ml_collections

from ptlearn import config_lib, machine

AUTO = config_lib.AUTO
logger = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (Linux's /proc/cpuinfo flags)."""
    return bool(machine.cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve(
    config: ml_collections.ConfigDict, devices: Sequence[Any]
) -> tuple[ml_collections.ConfigDict, dict[str, str]]:
    """(a copy of `config` with each "auto" numerics key set for `devices`, {key: the value
    chosen}); a config without "auto" comes back unchanged with {}."""
    on_cpu = all(d.platform == "cpu" for d in devices)
    resolved = config.copy_and_resolve_references()
    chosen: dict[str, str] = {}
    with resolved.unlocked():
        if str(resolved.trainer.precision) == AUTO:
            fast = not on_cpu or cpu_has_bf16()
            resolved.trainer.precision = "bf16" if fast else "32"
            chosen["trainer.precision"] = resolved.trainer.precision
            if not fast:
                logger.warning(
                    "trainer.precision=auto: this CPU has no bf16 hardware (avx512_bf16 or "
                    "amx_bf16), so the run trains in float32"
                )
        m = resolved.model
        if m.frozen_weights_dtype == AUTO:
            _, matmul = config_lib.dtypes_of_precision(resolved.trainer.precision)
            m.frozen_weights_dtype = "bfloat16" if matmul == "bfloat16" else "float32"
            chosen["model.frozen_weights_dtype"] = m.frozen_weights_dtype
        if m.activations_checkpoint_granularity == AUTO:
            m.activations_checkpoint_granularity = "full"
            chosen["model.activations_checkpoint_granularity"] = (
                m.activations_checkpoint_granularity
            )
    if chosen:
        logger.info("auto numerics: %s", ", ".join(f"{k}={v!r}" for k, v in chosen.items()))
    return resolved, chosen
