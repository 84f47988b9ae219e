"""Baselines for the FPB sentiment check: majority class, and the frozen model zero-shot.

  python experiments/fpb_baselines.py --data=data/fpb [--model=default]

Zero-shot uses the same template without virtual tokens ("{sentence} sentiment:"), both by
greedy generation (the first word of the continuation) and by rank classification (the label
whose tokens have the lowest NLL). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import json

import jax
import jax.numpy as jnp
import numpy as np

from ptlearn.checkpoints import load_model
from ptlearn.data.jsonl import read_jsonl
from ptlearn.generate import generate
from ptlearn.gpt import GPT
from ptlearn.losses import token_nll

LABELS = ("positive", "negative", "neutral")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/fpb")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    train = read_jsonl(f"{args.data}/train.jsonl")
    test = read_jsonl(f"{args.data}/test.jsonl")
    majority = collections.Counter(r["label"] for r in train).most_common(1)[0][0]
    gold = [r["label"] for r in test]

    loaded = load_model(args.model)
    tok = loaded.tokenizer
    prompts = [tok.encode(f"{r['sentence']} sentiment:") for r in test]
    outputs = generate(
        loaded.config, loaded.params, prompts, tokens_to_generate=4, eos_ids=[tok.eos_id]
    )
    generated = [
        tok.decode(o, skip_special_tokens=True).strip().split(" ")[0].strip(".,").lower()
        for o in outputs
    ]

    model = GPT(loaded.config)
    forward = jax.jit(lambda p, ids: model.apply({"params": p}, ids)[0])
    ranked = []
    for prompt in prompts:
        scores = []
        for label in LABELS:
            answer = tok.encode(" " + label)
            ids = jnp.asarray([prompt + answer])
            logits = forward(loaded.params, ids[:, :-1])
            nll = token_nll(logits[0, len(prompt) - 1 :], ids[0, len(prompt) :])
            scores.append(float(jnp.sum(nll)))
        ranked.append(LABELS[int(np.argmin(scores))])

    def accuracy(preds):
        return float(np.mean([p == g for p, g in zip(preds, gold, strict=True)]))

    print(
        json.dumps(
            {
                "n_test": len(test),
                "majority_class": majority,
                "majority_accuracy": accuracy([majority] * len(test)),
                "zero_shot_generation_accuracy": accuracy(generated),
                "zero_shot_rank_accuracy": accuracy(ranked),
            }
        )
    )


if __name__ == "__main__":
    main()
