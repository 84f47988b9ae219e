"""ptlearn vs Hugging Face PEFT on the same machine, alternately in one run (issue 5, item 3).

  python experiments/bench_vs_peft.py [--modes=prompt,ptune-mlp,ptune-lstm,forward,generate]
      [--repeats=2] [--steps=10] [--peer_python=PEER_VENV/bin/python]
      [--peer_model=runs/peer/smollm2-hf] [--convert] [--out=experiments/results/bench_vs_peft_table.md]

For each mode, `--repeats` times: `python -m ptlearn.bench` then ../shared/peer/bench_peft.py,
each a fresh subprocess (A B A B: absolute times drift on shared machines, so both sides see the
same drift). Each prints one JSON line; the table holds the median over repeats and the ratios
ptlearn / PEFT. Token counts match: ptlearn's `text_tokens_per_s` and PEFT's `real_tokens_per_s`
both count batch * seq text tokens per step (virtual tokens excluded). PEFT's generate uses
`--gen-impl=embeds` by default: the fastest correct transformers path (the issue's baseline).
Every raw JSON line is kept next to the table (`.jsonl`). When the peer python, torch or peft is
missing, one line says so and only ptlearn is measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from ptlearn import machine as ptlearn_machine
from ptlearn.checkpoints import default_model_path

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PEER_SCRIPT = SHARED / "peer" / "bench_peft.py"
# The peer harness (not ours) reads its generate prompts from this fixed path.
PEER_EVAL_TEXT = pathlib.Path("/tmp/peer/eval_text.txt")
PEER_MODEL = REPO / "runs" / "peer" / "smollm2-hf"  # the dense float32 HF folder (--convert)
# The peer venv of ../shared/peer/README.md; tests/test_export.py reads the same variable.
PEER_PYTHON = os.environ.get("PTLEARN_PEER_PYTHON", "")
FPB_TEXT = SHARED / "data" / "financial_phrasebank" / "Sentences_AllAgree.txt"
MODES = ("prompt", "ptune-mlp", "ptune-lstm", "forward", "generate")
STEP_MODES = ("prompt", "ptune-mlp", "ptune-lstm")

# Run with the peer python: load the GGUF, drop the (already dense) quantizer, save an HF folder.
CONVERT_SRC = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf_dir, gguf_name, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out)
AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name).save_pretrained(out)
print("saved", out)
"""

PEER_VERSIONS_SRC = (
    "import json, torch, transformers, peft; print(json.dumps({'torch': torch.__version__, "
    "'transformers': transformers.__version__, 'peft': peft.__version__}))"
)


class RunError(Exception):
    """A benchmark subprocess failed or printed no JSON line."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--repeats", type=int, default=2, help="A B pairs per mode")
    p.add_argument("--steps", type=int, default=10, help="timed steps (generate: timed calls)")
    p.add_argument("--peer_warmup", type=int, default=3, help="PEFT's untimed warm-up steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--virtual_tokens", type=int, default=10)
    p.add_argument("--prompt_len", type=int, default=40)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--gen_impl", default="embeds", help="PEFT generate: embeds|peft|peft-nocache")
    p.add_argument(
        "--ptlearn_flags",
        default="",
        help="extra ptlearn.bench flags, e.g. '--dtype=bfloat16 --frozen_dtype=bfloat16 "
        "--remat=full' (PEFT stays float32, as in the issue's figures)",
    )
    p.add_argument("--peer_python", default=PEER_PYTHON, help="default: $PTLEARN_PEER_PYTHON")
    p.add_argument("--peer_model", default=str(PEER_MODEL), help="converted HF folder")
    p.add_argument("--convert", action="store_true", help="build --peer_model when missing")
    p.add_argument(
        "--gguf", default="", help="source GGUF for --convert (default: the default model's)"
    )
    p.add_argument("--timeout", type=int, default=1800, help="seconds per subprocess")
    p.add_argument("--out", default="experiments/results/bench_vs_peft_table.md")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        p.error(f"--modes={args.modes}: use a comma list of {', '.join(MODES)}")
    if args.repeats < 1 or args.steps < 1:
        p.error("--repeats and --steps must be >= 1")
    args.modes = modes
    return args


# --------------------------------------------------------------------------------------------
# Subprocesses


def last_json_line(stdout: str) -> dict[str, Any]:
    """The last line of `stdout` that parses as a JSON object; RunError when there is none."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise RunError("no JSON line on stdout")


def run_json(cmd: Sequence[str], timeout: int) -> dict[str, Any]:
    """Run `cmd`, return its JSON line; RunError with the stderr tail on failure."""
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as e:
        raise RunError(f"timed out after {timeout} s") from e
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RunError(f"exit {proc.returncode}: {tail}")
    return last_json_line(proc.stdout)


def ptlearn_cmd(args: argparse.Namespace, mode: str) -> list[str]:
    """`python -m ptlearn.bench` for one mode, with this run's shapes."""
    return [
        sys.executable, "-m", "ptlearn.bench", "--model=default", f"--mode={mode}",
        f"--batch={args.batch}", f"--seq={args.seq}", f"--virtual_tokens={args.virtual_tokens}",
        f"--steps={args.steps}", f"--prompt_len={args.prompt_len}",
        f"--new_tokens={args.new_tokens}", *args.ptlearn_flags.split(),
    ]  # fmt: skip


def peer_cmd(args: argparse.Namespace, mode: str) -> list[str]:
    """bench_peft.py for one mode, same shapes, all CPU cores as torch threads."""
    cmd = [
        args.peer_python, str(PEER_SCRIPT), f"--mode={mode}", f"--model={args.peer_model}",
        f"--batch={args.batch}", f"--seq={args.seq}", f"--steps={args.steps}",
        f"--warmup={args.peer_warmup}", f"--threads={os.cpu_count()}",
        f"--num-virtual-tokens={args.virtual_tokens}",
    ]  # fmt: skip
    if mode == "generate":
        cmd += [
            f"--prompt-len={args.prompt_len}", f"--new-tokens={args.new_tokens}",
            f"--gen-reps={args.steps}", f"--gen-impl={args.gen_impl}",
        ]  # fmt: skip
    return cmd


# --------------------------------------------------------------------------------------------
# The peer's set-up


def peer_versions(peer_python: str) -> tuple[dict[str, str] | None, str]:
    """(torch/transformers/peft versions, "") or (None, why the peer cannot run)."""
    if not peer_python:
        return (
            None,
            "no peer python: set PTLEARN_PEER_PYTHON or --peer_python (../shared/peer/README.md)",
        )
    if not pathlib.Path(peer_python).exists():
        return None, f"peer python {peer_python} not found (see ../shared/peer/README.md)"
    proc = subprocess.run(
        [peer_python, "-c", PEER_VERSIONS_SRC], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return None, f"peer python {peer_python} lacks torch/transformers/peft: {tail[0]}"
    return last_json_line(proc.stdout), ""


def convert_model(peer_python: str, gguf: pathlib.Path, folder: pathlib.Path) -> None:
    """Write the GGUF as a dense float32 HF folder with the peer's transformers."""
    if not gguf.exists():
        raise RunError(f"--gguf={gguf} not found: pass the SmolLM2 GGUF to convert")
    folder.parent.mkdir(parents=True, exist_ok=True)
    cmd = [peer_python, "-c", CONVERT_SRC, str(gguf.parent), gguf.name, str(folder)]
    print("$ convert", gguf, "->", folder, file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RunError(f"conversion failed: {tail}")


def ensure_eval_text(path: pathlib.Path = PEER_EVAL_TEXT) -> None:
    """bench_peft.py's generate prompts come from `path`: fill it with FPB sentences if absent."""
    if path.exists():
        return
    if not FPB_TEXT.exists():
        raise RunError(f"{path} is missing and {FPB_TEXT} is not there to build it from")
    lines = FPB_TEXT.read_text(encoding="latin-1").splitlines()[:200]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(line.rsplit("@", 1)[0].strip() for line in lines) + "\n")


# --------------------------------------------------------------------------------------------
# Machine and table


def machine() -> dict[str, str]:
    """CPU model (family and model with it), logical cores and memory from /proc, plus OS
    and python."""
    mem = "unknown"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    return {
        "cpu": ptlearn_machine.cpu_name(),
        "cores": str(os.cpu_count()),
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    """Median of `key` over the runs that have it; None when none does."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(x: float | None, digits: int = 1) -> str:
    """A table cell: '-' for a missing value."""
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    return None if a is None or b is None or b == 0 else a / b


def step_rows(
    results: dict[str, dict[str, list[dict[str, Any]]]],
) -> list[str]:
    """Markdown rows for the train-step modes and forward."""
    fwd = {side: median_of(results.get("forward", {}).get(side, []), "median_s_per_step")
           for side in ("ptlearn", "peft")}  # fmt: skip
    rows = []
    for mode in (*STEP_MODES, "forward"):
        if mode not in results:
            continue
        pt, pe = results[mode]["ptlearn"], results[mode]["peft"]
        tok = (median_of(pt, "text_tokens_per_s"), median_of(pe, "real_tokens_per_s"))
        sps = (median_of(pt, "median_s_per_step"), median_of(pe, "median_s_per_step"))
        rss = (median_of(pt, "peak_rss_mb"), median_of(pe, "peak_rss_mb"))
        if mode == "forward":
            sf = (None, None)
        else:
            sf = (ratio(sps[0], fwd["ptlearn"]), ratio(sps[1], fwd["peft"]))
        rows.append(
            f"| {mode} | {fmt(tok[0])} | {fmt(tok[1])} | {fmt(ratio(*tok), 2)} "
            f"| {fmt(sps[0], 3)} | {fmt(sps[1], 3)} | {fmt(ratio(*sps), 2)} "
            f"| {fmt(sf[0], 2)} | {fmt(sf[1], 2)} "
            f"| {fmt(rss[0], 0)} | {fmt(rss[1], 0)} | {fmt(ratio(*rss), 2)} |"
        )
    return rows


def render(
    args: argparse.Namespace,
    results: dict[str, dict[str, list[dict[str, Any]]]],
    versions: dict[str, str],
    notes: list[str],
) -> str:
    """The markdown report: settings, machine, step table, generate table, notes."""
    m = machine()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# ptlearn vs PEFT, measured alternately in one run",
        "",
        f"Date: {now}. Command: `python experiments/bench_vs_peft.py {' '.join(sys.argv[1:])}`",
        "",
        f"Settings: batch {args.batch}, seq {args.seq} text tokens + {args.virtual_tokens} "
        f"virtual, {args.steps} timed steps, {args.repeats} repeat(s) per side (median shown), "
        f"PEFT warm-up {args.peer_warmup} steps; generate: {args.prompt_len}-token prompts, "
        f"{args.new_tokens} new tokens, PEFT `--gen-impl={args.gen_impl}`. PEFT float32; "
        f"ptlearn {args.ptlearn_flags or 'float32 (no extra flags)'}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores, {m['memory']}; {m['os']}; "
        f"python {m['python']}. " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
    ]
    rows = step_rows(results)
    if rows:
        out += [
            "tok/s = real text tokens per second (virtual tokens excluded on both sides); "
            "step/fwd = a train step's time over the same side's forward of the same batch; "
            "ratio = ptlearn / PEFT.",
            "",
            "| mode | ptlearn tok/s | PEFT tok/s | ratio | ptlearn s/step | PEFT s/step | ratio "
            "| ptlearn step/fwd | PEFT step/fwd | ptlearn peak RSS MB | PEFT peak RSS MB "
            "| RSS ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    if "generate" in results:
        pt, pe = results["generate"]["ptlearn"], results["generate"]["peft"]
        gen = (median_of(pt, "gen_tokens_per_s"), median_of(pe, "gen_tokens_per_s"))
        sec = (median_of(pt, "median_s_per_step"), median_of(pe, "median_gen_s"))
        rss = (median_of(pt, "peak_rss_mb"), median_of(pe, "peak_rss_mb"))
        out += [
            "| generate | ptlearn | PEFT | ratio |",
            "|---|---|---|---|",
            f"| new tokens/s | {fmt(gen[0], 2)} | {fmt(gen[1], 2)} | {fmt(ratio(*gen), 2)} |",
            f"| s per batch | {fmt(sec[0], 3)} | {fmt(sec[1], 3)} | {fmt(ratio(*sec), 2)} |",
            f"| peak RSS MB | {fmt(rss[0], 0)} | {fmt(rss[1], 0)} | {fmt(ratio(*rss), 2)} |",
            "",
        ]
    out += [
        "ptlearn's compile time (first call) is excluded from its times and reported as "
        "compile_s in the raw JSON lines; PEFT's warm-up steps likewise. '-' = not measured.",
    ]
    out += [f"\nNote: {n}" for n in notes]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------


def measure(
    args: argparse.Namespace, peer_ok: bool, raw: list[dict[str, Any]], notes: list[str]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Run every mode A B A B; collect JSON lines per side, failures into `notes`."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for mode in args.modes:
        results[mode] = {"ptlearn": [], "peft": []}
        for rep in range(args.repeats):
            sides = [("ptlearn", ptlearn_cmd(args, mode))]
            if peer_ok:
                sides.append(("peft", peer_cmd(args, mode)))
            for side, cmd in sides:
                try:
                    line = run_json(cmd, args.timeout)
                except RunError as e:
                    notes.append(f"{side} {mode} repeat {rep + 1} failed: {e}")
                    print(notes[-1], file=sys.stderr, flush=True)
                    continue
                results[mode][side].append(line)
                raw.append({"side": side, "mode": mode, "repeat": rep + 1, "result": line})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Set up the peer, measure, write the table and the raw JSON lines."""
    args = parse_args(argv)
    notes: list[str] = []
    versions, why = peer_versions(args.peer_python)
    peer_ok = versions is not None
    if peer_ok and not pathlib.Path(args.peer_model, "config.json").exists():
        if args.convert:
            try:
                convert_model(
                    args.peer_python,
                    pathlib.Path(args.gguf) if args.gguf else default_model_path(),
                    pathlib.Path(args.peer_model),
                )
            except RunError as e:
                peer_ok, why = False, str(e)
        else:
            peer_ok, why = (
                False,
                f"--peer_model={args.peer_model} has no config.json (add --convert)",
            )
    if peer_ok and "generate" in args.modes:
        try:
            ensure_eval_text()
        except RunError as e:
            notes.append(f"PEFT generate skipped: {e}")
    if not peer_ok:
        print(f"PEFT not measured: {why}", file=sys.stderr, flush=True)
        notes.append(f"PEFT not measured: {why}")
    raw: list[dict[str, Any]] = []
    results = measure(args, peer_ok, raw, notes)
    pt_line = next((r["result"] for r in raw if r["side"] == "ptlearn"), {})
    all_versions = {"jax": pt_line.get("jax", "?"), **(versions or {})}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(args, results, all_versions, notes))
    with out.with_suffix(".jsonl").open("w") as f:
        for r in raw:
            f.write(json.dumps(r) + "\n")
    print(out.read_text())
    return 0 if raw else 1


if __name__ == "__main__":
    sys.exit(main())
