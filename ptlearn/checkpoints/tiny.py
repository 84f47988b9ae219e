"""The tiny random model that ships with ptlearn (`--model=tiny`): a 2-layer Llama of width 64
with a byte-level BPE tokenizer of 320 tokens, as a Hugging Face folder of ~400 KB.

Quick-starts, the tutorial and sweep smoke tests train it in seconds. Its weights are random
(seed 0); its tokenizer is trained on the toy sentiment task (`ptlearn.data.toy`), so that
task's words are single tokens. The shipped folder is what `write_tiny_model` writes:

  python -m ptlearn.checkpoints.tiny [--out=FOLDER]   # default: ptlearn/checkpoints/tiny_model/
"""

from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import numpy as np

from ptlearn import gpt
from ptlearn.checkpoints import hf, tiny_model_path
from ptlearn.data import toy
from ptlearn.files import apply_umask

EOS = "<|endoftext|>"
VOCAB_SIZE = 320
# RoPE has no position parameters: a longer context costs nothing in the file.
MAX_POSITIONS = 512


def write_tiny_model(folder: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [f"{r['sentence']} sentiment: {r['label']}" for r in toy.sentences(300, 99)]
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": EOS, "eos_token": EOS, "pad_token": EOS, "add_bos_token": False})
    )
    config = gpt.VARIANTS["test"].replace(
        vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_POSITIONS
    )
    params = nn.unbox(gpt.init_params(config, jax.random.key(seed)))["params"]
    hf_config, tensors = hf.llama_state_dict(config, jax.tree.map(np.array, params))
    (folder / "config.json").write_text(json.dumps(hf_config, indent=1))
    save_file(
        {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
        str(folder / "model.safetensors"),
    )
    apply_umask(folder)
    return folder


def main(argv: list[str]) -> None:
    """Writes the tiny model into --out; prints {"folder": ...}."""
    from absl import flags

    from ptlearn import cli

    del argv
    cli.print_json({"folder": str(write_tiny_model(flags.FLAGS.out))})


if __name__ == "__main__":
    from absl import flags

    from ptlearn import cli

    flags.DEFINE_string("out", str(tiny_model_path()), "the folder to write")
    cli.run(main)
