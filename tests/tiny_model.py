"""A tiny random Llama with a real byte-level BPE tokenizer, written as a Hugging Face folder,
and tiny task data: what the training tests run on (seconds, not minutes)."""

import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
from safetensors.numpy import save_file
from test_hf_import import llama_files
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ptlearn import config_lib, gpt
from ptlearn.data.jsonl import write_jsonl

WORDS = [
    "profit",
    "rose",
    "fell",
    "sales",
    "loss",
    "growth",
    "market",
    "shares",
    "quarter",
    "company",
    "stable",
]
LABELS = ("positive", "negative", "neutral")
EOS = "<|endoftext|>"


def sentences(count: int, seed: int) -> list[dict]:
    """Synthetic sentiment examples whose label a model can learn from the words."""
    rng = np.random.default_rng(seed)
    cue = {"positive": "rose", "negative": "fell", "neutral": "stable"}
    records = []
    for i in range(count):
        label = LABELS[i % 3]
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 9))))
        words.insert(int(rng.integers(0, len(words))), cue[label])
        records.append({"taskname": "sentiment", "sentence": " ".join(words), "label": label})
    return records


def write_tiny_model(folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """config.json + model.safetensors + tokenizer.json of a 2-layer Llama, vocab 320."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [f"{r['sentence']} sentiment: {r['label']}" for r in sentences(300, 99)]
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": EOS, "eos_token": EOS, "pad_token": EOS, "add_bos_token": False})
    )
    config = gpt.VARIANTS["test"].replace(vocab_size=320)
    params = nn.unbox(gpt.init_params(config, jax.random.key(seed)))["params"]
    hf_config, tensors = llama_files(config, jax.tree.map(np.array, params))
    (folder / "config.json").write_text(json.dumps(hf_config))
    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors")
    )
    return folder


def write_tiny_data(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """train / val / test jsonl of the synthetic sentiment task."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, (count, seed) in {"train": (48, 1), "val": (12, 2), "test": (12, 3)}.items():
        paths[split] = folder / f"{split}.jsonl"
        write_jsonl(paths[split], sentences(count, seed))
    return paths


def tiny_config(model: pathlib.Path, data: dict[str, pathlib.Path], style: str = "p-tuning"):
    """A training config for the tiny model: a few fast steps, validation every 2."""
    c = config_lib.base_config()
    c.model.language_model_path = str(model)
    c.model.virtual_prompt_style = style
    c.model.new_tasks = ("sentiment",)
    c.model.task_templates = (
        config_lib.task_template(
            "sentiment",
            "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            total_virtual_tokens=4,
            virtual_token_splits=(4,),
            answer_field="label",
        ),
    )
    c.model.max_seq_length = 64
    c.model.global_batch_size = 8
    c.model.micro_batch_size = 4
    c.model.p_tuning.encoder_hidden = 32
    c.model.prompt_tuning.new_prompt_init_methods = ("vocab",)
    c.model.data.train_ds = (str(data["train"]),)
    c.model.data.validation_ds = (str(data["val"]),)
    c.model.data.validation_metric_examples = 4
    c.model.optim.lr = 1e-2
    c.model.optim.sched.warmup_steps = 1
    c.trainer.max_steps = 6
    c.trainer.val_check_interval = 2
    c.trainer.log_every_n_steps = 1
    c.inference.tokens_to_generate = 3
    c.inference.batch_size = 4
    return c


def sharp_attention(params, scale=25.0):
    """Random init attends almost uniformly (positions barely matter); larger query and key
    weights make attention depend on where each token is."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: (
            x * scale if any(getattr(k, "key", "") in ("query", "key") for k in path) else x
        ),
        params,
    )
