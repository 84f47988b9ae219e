"""Per-device memory and step cost of p-tuning NeMo's GPT sizes (and Llama 2 7B / 13B) on GPU
meshes, from `python -m ptlearn.plan` (the real train step compiled over abstract weights on
simulated devices: no GPU, no weights). Writes results.md and results.jsonl here.

  python experiments/plan_nemo_sizes/run.py

Each row: the shipped `sentiment_ptuning` config (MLP encoder, 10 virtual tokens, sequences of
256, micro-batch 8 per data-parallel group, bf16 matmuls and bf16 frozen weights as on a GPU), at NeMo's
tensor-parallel degree for the size (345M and 1.3B on one GPU, 5B at TP=2, 20B at TP=4) and at
FSDP alternatives.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# (variant, tensor parallel, fsdp): NeMo's degrees first, then alternatives.
ROWS = [
    ("gpt-345m", 1, 1),
    ("gpt-1.3b", 1, 1),
    ("gpt-5b", 2, 1),
    ("gpt-5b", 1, 2),
    ("gpt-20b", 4, 1),
    ("gpt-20b", 2, 2),
    ("gpt-20b", 1, 4),
    ("llama-7b", 1, 1),
    ("llama-7b", 2, 1),
    ("llama-13b", 2, 1),
    ("llama-13b", 4, 1),
]
FIT = ("a100-80g", "h100-80g")


def command(variant: str, tp: int, fsdp: int) -> list[str]:
    return [
        "python",
        "-m",
        "ptlearn.plan",
        "--config=sentiment_ptuning",
        f"--variant={variant}",
        f"--devices={tp * fsdp}",
        f"--config.model.tensor_model_parallel_size={tp}",
        f"--config.mesh.fsdp={fsdp}",
        # FSDP splits the batch too: each of its groups keeps a micro-batch of 8.
        f"--config.model.global_batch_size={8 * fsdp}",
        f"--fit={','.join(FIT)}",
    ]


def gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def main() -> None:
    rows = []
    for variant, tp, fsdp in ROWS:
        argv = command(variant, tp, fsdp)
        proc = subprocess.run(
            [sys.executable, *argv[1:]], capture_output=True, text=True, cwd=ROOT, check=False
        )
        if proc.returncode:
            sys.exit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({**result, "tp": tp, "fsdp": fsdp, "command": " ".join(argv)})
        print(variant, tp, fsdp, gib(result["total_bytes"]), "GiB", flush=True)
    (HERE / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [
        "| model | TP | FSDP | frozen | trainable + optimizer | step temporaries | total "
        "(GiB per device) | A100-80G | H100-80G | tokens / step | GFLOPs / token | s / step "
        "(A100, H100 at 40% MFU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fits = [
            f"{'fits' if r['fits'][a]['fits'] else 'no'} (micro-batch <= "
            f"{r['fits'][a]['largest_micro_batch']})"
            for a in FIT
        ]
        seconds = ", ".join(f"{r['fits'][a]['step_s_at_mfu']:.2f}" for a in FIT)
        lines.append(
            f"| {r['variant']} | {r['tp']} | {r['fsdp']} | {gib(r['frozen_param_bytes'])} | "
            f"{gib(r['trainable_param_bytes'] + r['optimizer_bytes'])} | {gib(r['temp_bytes'])} | "
            f"{gib(r['total_bytes'])} | {fits[0]} | {fits[1]} | {r['tokens_per_step']} | "
            f"{r['flops_per_step'] / r['tokens_per_step'] / 1e9:.1f} | {seconds} |"
        )
    commands = "\n".join(f"    {r['command']}" for r in rows)
    # What ptlearn does not hold: mixed-precision training of the weights themselves keeps 16
    # bytes a parameter (bf16 weights and gradients, float32 master copy and two Adam moments).
    nemo = [r for r in rows if r["variant"].startswith("gpt-") and r["fsdp"] == 1]
    compare = [
        f"- {r['variant']} at TP={r['tp']}: {gib(r['frozen_param_bytes'])} GiB of frozen bf16 "
        f"weights a device, against {gib(8 * r['frozen_param_bytes'])} GiB of weight, gradient "
        "and optimizer state if the weights trained"
        for r in nemo
    ]
    (HERE / "results.md").write_text(
        "# Planned memory and cost of p-tuning NeMo's GPT sizes\n\n"
        + (__doc__ or "").split("\n\n", 1)[0]
        + "\n\n"
        + "\n".join(lines)
        + "\n\nNeMo runs 345M and 1.3B on one GPU, 5B at TP=2 and 20B at TP=4 (SPEC 6); every one "
        "of those fits an 80 GB GPU here with room for a larger micro-batch, because only the "
        "prompt trains: the frozen weights carry no gradient and no optimizer state, and are "
        "stored in bf16.\n\n"
        + "\n".join(compare)
        + "\n\nThe temporaries are XLA's buffer assignment for the step compiled for CPU "
        "devices (float32 accumulation, no flash attention): an upper bound for a GPU's. "
        "FLOPs are counted from the shapes (forward, plus the backward with respect to "
        "activations only: 2x the forward, plus the forward that full remat, the 'auto' "
        "numerics' choice, recomputes; `--config.model.activations_checkpoint_granularity=` "
        "plans without it: a third fewer FLOPs, several times the temporaries). "
        "tests/test_plan.py checks the per-device bytes against a real run's arrays."
        "\n\nCommands:\n\n" + commands + "\n"
    )


if __name__ == "__main__":
    main()
