"""Tokenizers stored in a GGUF file's metadata: byte-level BPE ('gpt2') or SentencePiece BPE
('llama'), read through ptlearn.gguf_metadata (the readers the GGUF weight importer uses)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizerCore

from ptlearn.errors import CheckpointError
from ptlearn.gguf_metadata import metadata_value, open_reader
from ptlearn.tokenizers.base import PathLike, Tokenizer
from ptlearn.tokenizers.byte_level import HFTokenizer, _literal
from ptlearn.tokenizers.sentencepiece_model import SentencePieceTokenizer, _load_sp

# GGUF token types (llama.cpp); SentencePiece's ModelProto.SentencePiece.Type uses the same values.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


# Pre-tokenizer regexes: llama.cpp picks them by tokenizer.ggml.pre, HF tokenizer.json spells them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_PRE_FAMILIES = {
    "gpt2": ("default", "gpt-2", "gpt2"),
    "digits": ("smollm", "starcoder", "refact"),
    "llama3": ("llama3", "llama-bpe"),
    "qwen2": ("qwen2",),
}


def _byte_level_pre_tokenizer(pre: str, source: str) -> tuple[Any, bool]:
    """(pre-tokenizer, ignore_merges) for GGUF ``tokenizer.ggml.pre`` value ``pre``."""
    family = next((f for f, names in _PRE_FAMILIES.items() if pre in names), None)
    if family is None:
        known = sorted(n for names in _PRE_FAMILIES.values() for n in names)
        raise CheckpointError(
            f"{source}: tokenizer.ggml.pre={pre!r} is not supported (known: {', '.join(known)}); "
            "load the model's Hugging Face folder (tokenizer.json) instead"
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family != "llama3")
    if family == "gpt2":
        return byte_level, False
    if family == "digits":
        # Digits are split one by one before the GPT-2 regex (SmolLM / StarCoder tokenizers).
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(True), byte_level]), False
    pattern = _LLAMA3_SPLIT if family == "llama3" else _QWEN2_SPLIT
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    no_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([split, no_regex]), family == "llama3"


def _gguf_byte_level(reader: Any, source: str, special: dict, add_bos: bool) -> HFTokenizer:
    """Byte-level BPE from tokenizer.ggml.tokens / merges / token_type / pre."""
    tokens = metadata_value(reader, "tokenizer.ggml.tokens")
    merges = metadata_value(reader, "tokenizer.ggml.merges")
    if tokens is None or merges is None:
        raise CheckpointError(f"{source}: tokenizer.ggml.tokens or tokenizer.ggml.merges missing")
    types = metadata_value(reader, "tokenizer.ggml.token_type", [_NORMAL] * len(tokens))
    pre_tok, ignore_merges = _byte_level_pre_tokenizer(
        metadata_value(reader, "tokenizer.ggml.pre", "default"), source
    )
    try:
        bpe = models.BPE(
            {t: i for i, t in enumerate(tokens)},
            [tuple(m.split(" ", 1)) for m in merges],
            ignore_merges=ignore_merges,
        )
    except Exception as e:  # tokenizers raises plain Exception for a merge outside the vocab
        raise CheckpointError(f"{source}: the BPE vocabulary / merges are inconsistent: {e}") from e
    core = HFTokenizerCore(bpe)
    core.pre_tokenizer = pre_tok
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(
        [_literal(t, True) for t, k in zip(tokens, types, strict=True) if k in (_CONTROL, _UNKNOWN)]
    )
    core.add_tokens(
        [_literal(t, False) for t, k in zip(tokens, types, strict=True) if k == _USER_DEFINED]
    )
    return HFTokenizer(core, add_bos=add_bos, source=source, **special)


def sentencepiece_proto_from_gguf(reader: Any, source: str = "<gguf>") -> bytes:
    """A serialised SentencePiece BPE ModelProto from tokenizer.ggml.tokens / scores / token_type.

    llama.cpp's 'llama' tokenizer is SentencePiece BPE (merge the best-scoring pair first) on
    unnormalised text with whitespace escaped to U+2581, and a dummy space prefix unless
    tokenizer.ggml.add_space_prefix is false.
    """
    # Imported here: only this path needs protobuf.
    from sentencepiece import sentencepiece_model_pb2 as pb2

    tokens = metadata_value(reader, "tokenizer.ggml.tokens")
    scores = metadata_value(reader, "tokenizer.ggml.scores")
    types = metadata_value(reader, "tokenizer.ggml.token_type")
    if tokens is None or scores is None or types is None:
        raise CheckpointError(
            f"{source}: a 'llama' tokenizer needs tokenizer.ggml.tokens, scores and token_type"
        )
    proto = pb2.ModelProto()
    trainer = proto.trainer_spec
    trainer.model_type = pb2.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = _BYTE in types
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(metadata_value(reader, "tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = bool(
        metadata_value(reader, "tokenizer.ggml.remove_extra_whitespaces", False)
    )
    norm.escape_whitespaces = True
    for token, score, kind in zip(tokens, scores, types, strict=True):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, float(score), int(kind)
    return proto.SerializeToString()


def from_gguf(path_or_reader: PathLike | Any) -> Tokenizer:
    """The tokenizer stored in a GGUF file's metadata (a path or a ``gguf.GGUFReader``).

    ``tokenizer.ggml.model`` 'gpt2' gives byte-level BPE with the pre-tokenizer named by
    ``tokenizer.ggml.pre``; 'llama' gives SentencePiece BPE. Other kinds raise CheckpointError.
    """
    if isinstance(path_or_reader, (str, os.PathLike)):
        reader = open_reader(pathlib.Path(path_or_reader))
        source = str(path_or_reader)
    else:
        reader = path_or_reader
        source = str(getattr(getattr(reader, "data", None), "filename", "<GGUF reader>"))
    kind = metadata_value(reader, "tokenizer.ggml.model")
    special = {
        "bos_id": metadata_value(reader, "tokenizer.ggml.bos_token_id"),
        "eos_id": metadata_value(reader, "tokenizer.ggml.eos_token_id"),
        "pad_id": metadata_value(reader, "tokenizer.ggml.padding_token_id"),
        "unk_id": metadata_value(reader, "tokenizer.ggml.unknown_token_id"),
    }
    # llama.cpp's defaults when the file does not say: BOS for SentencePiece, none for BPE.
    add_bos = metadata_value(reader, "tokenizer.ggml.add_bos_token", kind == "llama")
    if kind == "gpt2":
        tok: Tokenizer = _gguf_byte_level(reader, source, special, bool(add_bos))
    elif kind == "llama":
        sp = _load_sp(source, model_proto=sentencepiece_proto_from_gguf(reader, source))
        tok = SentencePieceTokenizer(sp, add_bos=bool(add_bos), source=source, **special)
    if kind in ("gpt2", "llama"):
        for name, i in special.items():
            if i is not None and not 0 <= i < tok.vocab_size:
                raise CheckpointError(
                    f"{source}: special token {name}={i} is outside the vocabulary "
                    f"(size {tok.vocab_size})"
                )
        return tok
    if kind is None:
        raise CheckpointError(f"{source}: no tokenizer.ggml.model key; the GGUF has no tokenizer")
    raise CheckpointError(
        f"{source}: tokenizer.ggml.model={kind!r} is not supported (use 'gpt2' or 'llama'); "
        "load the model's Hugging Face folder instead"
    )
