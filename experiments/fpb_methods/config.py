"""The FPB method table: the frozen default model zero-shot and in-context, prompt tuning with
each initialisation, p-tuning with each encoder, deep prompts; test accuracy, wall time,
trainable parameters.

  python -m ptlearn.data.prepare financial_phrasebank --raw_dir=../shared/data --out_dir=data/fpb
  python -m ptlearn.sweep --config=experiments/fpb_methods/config.py --workdir=runs/fpb_methods
  python experiments/majority_baselines.py --out=experiments/fpb_methods/baselines.csv
  python -m ptlearn.report runs/fpb_methods --out=experiments/fpb_methods \
    --baselines=experiments/fpb_methods/baselines.csv

Methods (`method=...`): `zero-shot` and `zero-shot-rank` (no virtual tokens, no training: the
template alone, answered by greedy generation up to the first newline or by ranking the three
labels), `in-context-3[-rank]` and `in-context-8[-rank]` (k training examples written into the
template, one per line, label-balanced, drawn by `seed`; no training; answered either way), `prompt-{text,random,vocab,labels}` (prompt tuning, 10 virtual tokens)
and `ptune-{mlp,lstm,biglstm,tpmlp}` (p-tuning, 10 virtual tokens), `prefix-text` and
`prefix-mlp` (deep prompts, 10 virtual tokens: tables started from the frozen model's keys and
values of the init text, or P-tuning v2's MLP projection). Trained methods run the
shipped recipes for a fixed 400 steps in bf16 (as experiments/fpb_prompt_length); every method
is scored on the same test split. The majority-class row comes from
`python experiments/majority_baselines.py --out=experiments/fpb_methods/baselines.csv`, given to the
report as `--baselines`.
"""

import json
import pathlib

import numpy as np

from ptlearn import config_lib
from ptlearn.configs import common

PROMPT_INITS = ("text", "random", "vocab", "labels")
ENCODERS = ("mlp", "lstm", "biglstm", "tpmlp")
QUERY = "{sentence} sentiment: {label}"


def _demonstrations(train_file: str, shots: int, seed: int) -> str:
    """`shots` training examples as template text, labels taking turns, drawn by `seed`."""
    records = [json.loads(line) for line in pathlib.Path(train_file).read_text().splitlines()]
    rng = np.random.default_rng(seed)
    by_label = {}
    for record in records:
        if "{" not in record["sentence"] and "}" not in record["sentence"]:
            by_label.setdefault(record["label"], []).append(record)
    labels = sorted(by_label)
    picks = [by_label[labels[i % len(labels)]] for i in range(shots)]
    chosen = [group[int(rng.integers(len(group)))] for group in picks]
    rng.shuffle(chosen)
    return "".join(f"{r['sentence']} sentiment: {r['label']}\n" for r in chosen)


def get_config(arg=None):
    args = config_lib.parse_arg(arg, method="prompt-text", seed=0, model="default", data="data/fpb")
    method = args.method
    shared_args = f"seed={args.seed},model={args.model},data={args.data}"
    untrained = method.startswith(("zero-shot", "in-context"))
    if method.startswith("prefix-"):
        projection = {"prefix-text": False, "prefix-mlp": True}.get(method)
        if projection is None:
            raise config_lib.ConfigError(f"method={method!r}: use prefix-text or prefix-mlp")
        config = config_lib.load_config(
            "sentiment_prefix_tuning", f"init=text,projection={projection},{shared_args}"
        )
    elif method.startswith("ptune-"):
        encoder = method.removeprefix("ptune-")
        config = config_lib.load_config("sentiment_ptuning", f"encoder={encoder},{shared_args}")
    elif method.startswith("prompt-") or untrained:
        init = method.removeprefix("prompt-") if method.startswith("prompt-") else "text"
        virtual = 0 if untrained else 10
        config = config_lib.load_config(
            "sentiment_prompt_tuning", f"init={init},virtual={virtual},{shared_args}"
        )
    else:
        raise config_lib.ConfigError(f"method={method!r} is not one of this table's methods")
    with config.unlocked():
        config.trainer.max_steps = 400
        config.trainer.val_check_interval = 100
        common.fast_cpu_training(config)
        config.model.data.validation_metric_examples = 0
        if untrained:
            shots = int(method.split("-")[2]) if method.startswith("in-context") else 0
            template = config.model.task_templates[0]
            if shots:
                demos = _demonstrations(f"{args.data}/train.jsonl", shots, args.seed)
                template.prompt_template = demos + template.prompt_template
            config.model.max_seq_length = 512
            config.trainer.max_steps = 0  # nothing to train: the frozen model as it is
            config.inference.rank_classification = method.endswith("-rank")
            # The frozen model goes on past its label (to the next example); the answer is the
            # first line of its continuation, as the demonstrations are one per line.
            config.inference.stop_strings = ("\n",)
    return config


def get_hyper(h):
    untrained = h.product(
        [h.sweep("method", ["zero-shot", "zero-shot-rank"]), h.sweep("seed", [0])]
    )
    seeded = h.product(
        [
            h.sweep(
                "method",
                ["in-context-3", "in-context-3-rank", "in-context-8", "in-context-8-rank"]
                + [f"prompt-{i}" for i in PROMPT_INITS]
                + ["prefix-text", "prefix-mlp"]
                + [f"ptune-{e}" for e in ENCODERS],
            ),
            h.sweep("seed", [0, 1, 2]),
        ]
    )
    return h.chainit([untrained, seeded])
