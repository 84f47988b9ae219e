"""Greedy tokens of ptlearn's decoder vs transformers' generate, same prompts, same virtual prompt.

  python experiments/greedy_vs_transformers.py [--peer_python=PEER_VENV/bin/python]

The peer side is `../shared/peer/bench_peft.py --mode=generate --gen-impl=embeds --save-ids`:
PEFT prompt tuning with its TEXT init (untrained, so the virtual prompt is the embeddings of the
init text's tokens, repeated to 10 tokens), decoded by transformers' generate from
inputs_embeds with the KV cache, the fastest correct path. ptlearn builds the same virtual
prompt from the same text and decodes the same prompt ids with `generate.decode` (float32, and
bfloat16 weights with bf16 matmuls), then compares the new tokens position by position.
The peer asks for exactly N tokens (min_new_tokens), which makes transformers mask the EOS
logit; ptlearn stops a row at EOS, so a row is compared up to the token before its EOS.
Writes experiments/results/greedy_vs_transformers.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from bench_vs_peft import PEER_MODEL, PEER_PYTHON, PEER_SCRIPT, convert_model, ensure_eval_text  # noqa: E402

from ptlearn import generate, gpt, serving  # noqa: E402
from ptlearn.checkpoints import default_model_path, load_model  # noqa: E402

INIT_TEXT = "Answer the following question truthfully and concisely:"  # bench_peft.py's default


def peer_tokens(peer_python: str, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """Runs the peer once and returns its saved {"prompt_ids", "new_ids"}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "ids.json"
        cmd = [
            peer_python, str(PEER_SCRIPT), "--mode=generate", "--gen-impl=embeds",
            f"--model={PEER_MODEL}", f"--batch={batch}", f"--prompt-len={prompt_len}",
            f"--new-tokens={new_tokens}", "--gen-reps=1", "--gen-warmup-full=0",
            f"--save-ids={out}",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
        return json.loads(out.read_text())


def ptlearn_tokens(
    prompt_ids: np.ndarray, new_tokens: int, dtype: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy decoding of [text-init virtual prompt; prompt_ids] with the default model.

    Returns (tokens [B, N], lengths [B] with the EOS included, the EOS id)."""
    loaded = load_model("default", dtype=dtype)
    config = loaded.config.replace(dtype="float32", param_dtype=dtype, matmul_dtype=dtype)
    config, params = serving.serving_layout(config, loaded.params)
    params = jax.device_put(params)
    init_ids = loaded.tokenizer.encode(INIT_TEXT)
    virtual = np.resize(np.asarray(init_ids), 10)  # PEFT's TEXT init: repeat, then cut
    model = gpt.GPT(config)

    def embed(ids: np.ndarray) -> jax.Array:
        return model.apply({"params": params}, jnp.asarray(ids), method=gpt.GPT.embed_tokens)

    batch = prompt_ids.shape[0]
    table = embed(virtual[None]).astype(jnp.float32)
    embeddings = jnp.concatenate([jnp.repeat(table, batch, 0), embed(prompt_ids)], axis=1)
    ids = np.zeros(embeddings.shape[:2], np.int32)
    tokens, lengths = generate.decode(
        {"params": params},
        jnp.asarray(ids),
        jnp.ones(ids.shape, bool),
        jax.random.key(0),
        embeddings,
        config=config,
        tokens_to_generate=new_tokens,
        sampling=generate.Sampling(),
        eos_ids=(loaded.tokenizer.eos_id,),
    )
    return np.asarray(tokens), np.asarray(lengths), loaded.tokenizer.eos_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer_python", default=PEER_PYTHON, help="default: $PTLEARN_PEER_PYTHON")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=40)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "experiments/results/greedy_vs_transformers"))
    args = p.parse_args(argv)
    if not args.peer_python:
        p.error(
            "no peer python: set PTLEARN_PEER_PYTHON or --peer_python (../shared/peer/README.md)"
        )
    if not (PEER_MODEL / "config.json").is_file():
        convert_model(args.peer_python, default_model_path(), PEER_MODEL)
    ensure_eval_text()
    peer = peer_tokens(args.peer_python, args.batch, args.prompt_len, args.new_tokens)
    prompt_ids, expected = np.asarray(peer["prompt_ids"]), np.asarray(peer["new_ids"])
    rows = []
    for dtype in ("float32", "bfloat16"):
        got, lengths, eos = ptlearn_tokens(prompt_ids, args.new_tokens, dtype)
        compared, stopped = [], []
        for row, length in enumerate(lengths):
            ended = got[row, length - 1] == eos
            stopped.append(int(length - 1) if ended else None)
            compared.append(int(length - 1) if ended else int(length))
        same = [got[r, :n] == expected[r, :n] for r, n in enumerate(compared)]
        # Tokens after a first difference follow another context: count up to it.
        first_diff = [int(np.argmin(s)) if not s.all() else len(s) for s in same]
        rows.append(
            {
                "weights": dtype,
                "identical_rows": int(sum(s.all() for s in same)),
                "rows": len(same),
                "tokens_compared": compared,
                "ptlearn_eos_at": stopped,
                "tokens_before_first_difference": first_diff,
            }
        )
    lines = [
        "# Greedy tokens: ptlearn vs transformers (inputs_embeds + KV cache)",
        "",
        f"{args.batch} prompts of {args.prompt_len} tokens (bench_peft.py's eval text), the "
        f"PEFT text-init virtual prompt (10 tokens), {args.new_tokens} greedy new tokens; "
        "transformers runs float32.",
        "",
        "| ptlearn weights | identical rows | tokens compared per row (EOS cuts) | "
        "tokens before the first difference |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['weights']} | {r['identical_rows']}/{r['rows']} | {r['tokens_compared']} | "
            f"{r['tokens_before_first_difference']} |"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, **peer}) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
