"""Byte-level BPE (GPT-2 family) and SentencePiece tokenizers behind one small interface.

Loaders read a GGUF file's tokenizer metadata, a Hugging Face folder or a SentencePiece
``.model`` file. Special ids (bos / eos / pad / unk) and ``add_bos`` come from the checkpoint.
``encode`` never adds BOS / EOS: callers decide (the template and ``add_BOS`` options do).

  base.py                 the interface (Tokenizer)
  byte_level.py           HFTokenizer and the Hugging Face folder loaders
  sentencepiece_model.py  SentencePieceTokenizer and the .model loader
  gguf.py                 both, from GGUF metadata
"""

from __future__ import annotations

import pathlib

from ptlearn.errors import CheckpointError
from ptlearn.tokenizers.base import PathLike, Tokenizer
from ptlearn.tokenizers.byte_level import (
    HFTokenizer,
    from_byte_level_bpe,
    from_hf_folder,
    read_json_object,
)
from ptlearn.tokenizers.gguf import from_gguf, sentencepiece_proto_from_gguf
from ptlearn.tokenizers.sentencepiece_model import SentencePieceTokenizer, from_sentencepiece

__all__ = [
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "from_byte_level_bpe",
    "from_gguf",
    "from_hf_folder",
    "from_sentencepiece",
    "load_tokenizer",
    "read_json_object",
    "sentencepiece_proto_from_gguf",
]


def load_tokenizer(path: PathLike) -> Tokenizer:
    """The tokenizer of a checkpoint: a GGUF file, a Hugging Face folder or a ``.model`` file."""
    p = pathlib.Path(path)
    if not p.exists():
        raise CheckpointError(
            f"{p}: not found; give a .gguf file, a Hugging Face folder or a SentencePiece .model"
        )
    if p.is_dir():
        return from_hf_folder(p)
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return from_gguf(p)
    if p.suffix == ".model":
        return from_sentencepiece(p)
    raise CheckpointError(
        f"{p}: not a tokenizer this code reads; give a .gguf file, a Hugging Face folder "
        "(tokenizer.json, vocab.json + merges.txt or tokenizer.model) or a SentencePiece .model"
    )
