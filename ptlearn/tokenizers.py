"""Byte-level BPE (GPT-2 family) and SentencePiece tokenizers behind one small interface.

Loaders read a GGUF file's tokenizer metadata, a Hugging Face folder or a SentencePiece
``.model`` file. Special ids (bos / eos / pad / unk) and ``add_bos`` come from the checkpoint.
``encode`` never adds BOS / EOS: callers decide (the template and ``add_BOS`` options do).
"""

from __future__ import annotations

import abc
import json
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import sentencepiece as spm
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizerCore

from ptlearn.errors import CheckpointError

PathLike = str | os.PathLike

# GGUF token types (llama.cpp); SentencePiece's ModelProto.SentencePiece.Type uses the same values.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes: llama.cpp picks them by tokenizer.ggml.pre, HF tokenizer.json spells them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# GPT-2's end-of-text token: special in every GPT-2 vocabulary, and its bos / eos / unk by default.
_GPT2_EOT = "<|endoftext|>"
_PRE_FAMILIES = {
    "gpt2": ("default", "gpt-2", "gpt2"),
    "digits": ("smollm", "starcoder", "refact"),
    "llama3": ("llama3", "llama-bpe"),
    "qwen2": ("qwen2",),
}


class Tokenizer(abc.ABC):
    """A tokenizer with the checkpoint's special ids.

    Attributes:
      vocab_size: number of ids, added tokens included; valid ids are ``range(vocab_size)``.
      bos_id, eos_id, pad_id, unk_id: special ids, ``None`` when the checkpoint has none.
      add_bos: whether the checkpoint asks for BOS at the start of each sequence.
      source: the file or folder it was loaded from, for error messages.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        add_bos: bool,
        source: str,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        unk_id: int | None = None,
    ):
        self.vocab_size, self.add_bos, self.source = vocab_size, add_bos, source
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS / EOS added); literal special tokens map to their id."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, computed in one batched call where the backend can."""
        return [self.encode(t) for t in texts]

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` taken literally: a special token's name written in it (data
        holding ``<|endoftext|>``) stays text and never becomes the control token."""
        return self.encode(text)

    @abc.abstractmethod
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` ([T] ints); special tokens are written out unless skipped."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of vocabulary entry ``token`` (as spelled in the vocabulary), or ``None``."""

    @abc.abstractmethod
    def id_to_token(self, i: int) -> str | None:
        """The vocabulary entry of id ``i``, or ``None`` when ``i`` is out of range."""

    def _checked_ids(self, ids: Sequence[int]) -> list[int]:
        """``ids`` as Python ints; an id outside the vocabulary is an error, not a silent drop."""
        out = [int(i) for i in ids]
        bad = [i for i in out if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"ids {bad[:5]} are outside the vocabulary of {self.source} (size "
                f"{self.vocab_size}): the model's vocabulary does not match its tokenizer"
            )
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id}, "
            f"unk_id={self.unk_id}, add_bos={self.add_bos})"
        )


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` (byte-level BPE, or anything a tokenizer.json describes)."""

    def __init__(self, core: HFTokenizerCore, *, add_bos: bool, source: str, **special):
        super().__init__(
            vocab_size=core.get_vocab_size(with_added_tokens=True),
            add_bos=add_bos,
            source=source,
            **special,
        )
        self.core = core

    def encode(self, text: str) -> list[int]:
        """See ``Tokenizer.encode``."""
        return self.core.encode(text, add_special_tokens=False).ids

    def encode_text(self, text: str) -> list[int]:
        """See ``Tokenizer.encode_text``: a copy of the core with special-token matching off."""
        if not hasattr(self, "_literal"):
            self._literal = HFTokenizerCore.from_str(self.core.to_str())
            self._literal.encode_special_tokens = True
        return self._literal.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """See ``Tokenizer.encode_batch``; multi-threaded, no offsets computed."""
        return [e.ids for e in self.core.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """See ``Tokenizer.decode``."""
        return self.core.decode(self._checked_ids(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """See ``Tokenizer.token_to_id``."""
        return self.core.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """See ``Tokenizer.id_to_token``."""
        return self.core.id_to_token(int(i)) if 0 <= int(i) < self.vocab_size else None


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; control and unknown pieces written in the text map to their id.

    Text between two special tokens is encoded as its own piece of text (with SentencePiece's
    dummy space prefix), as llama.cpp and Hugging Face's legacy Llama tokenizer do.
    """

    def __init__(self, sp: spm.SentencePieceProcessor, *, add_bos: bool, source: str, **special):
        super().__init__(vocab_size=sp.get_piece_size(), add_bos=add_bos, source=source, **special)
        self.sp = sp
        self._special = {
            sp.id_to_piece(i): i
            for i in range(self.vocab_size)
            if (sp.is_control(i) or sp.is_unknown(i)) and sp.id_to_piece(i)
        }
        # Longest first, so a special token that contains another wins.
        alternatives = sorted(self._special, key=len, reverse=True)
        self._special_re = (
            re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if alternatives else None
        )

    def _segments(self, text: str) -> list[str | int]:
        """``text`` cut into plain-text strings and special-token ids, in order."""
        if self._special_re is None:
            return [text] if text else []
        parts = self._special_re.split(text)
        # re.split with one group alternates text, special, text, ...
        return [self._special[p] if k % 2 else p for k, p in enumerate(parts) if p]

    def encode(self, text: str) -> list[int]:
        """See ``Tokenizer.encode``."""
        return self.encode_batch([text])[0]

    def encode_text(self, text: str) -> list[int]:
        """See ``Tokenizer.encode_text``: SentencePiece itself reads control names as text."""
        return list(self.sp.encode(text, out_type=int)) if text else []

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """See ``Tokenizer.encode_batch``; all plain-text pieces go to SentencePiece at once."""
        segmented = [self._segments(t) for t in texts]
        plain = [s for segs in segmented for s in segs if isinstance(s, str)]
        encoded = iter(self.sp.encode(plain, out_type=int) if plain else [])
        out = []
        for segs in segmented:
            ids: list[int] = []
            for s in segs:
                ids.extend(next(encoded) if isinstance(s, str) else [s])
            out.append(ids)
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """See ``Tokenizer.decode``; byte-fallback pieces ``<0x..>`` become UTF-8 text."""
        text: list[str] = []
        run: list[int] = []
        for i in self._checked_ids(ids):
            if self.sp.is_control(i) or self.sp.is_unknown(i):
                text.append(self.sp.decode(run))
                run = []
                if not skip_special_tokens:
                    text.append(self.sp.id_to_piece(i))
            else:
                run.append(i)
        text.append(self.sp.decode(run))
        return "".join(text)

    def token_to_id(self, token: str) -> int | None:
        """See ``Tokenizer.token_to_id``."""
        i = self.sp.piece_to_id(token)
        # piece_to_id answers unk_id for pieces it does not know.
        return i if self.sp.id_to_piece(i) == token else None

    def id_to_token(self, i: int) -> str | None:
        """See ``Tokenizer.id_to_token``."""
        return self.sp.id_to_piece(int(i)) if 0 <= int(i) < self.vocab_size else None


# ---------------------------------------------------------------------------------------------
# GGUF


def _gguf_field(reader: Any, key: str, default: Any = None) -> Any:
    """The contents of GGUF metadata field ``key``, or ``default`` when absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


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
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    merges = _gguf_field(reader, "tokenizer.ggml.merges")
    if tokens is None or merges is None:
        raise CheckpointError(f"{source}: tokenizer.ggml.tokens or tokenizer.ggml.merges missing")
    types = _gguf_field(reader, "tokenizer.ggml.token_type", [_NORMAL] * len(tokens))
    pre_tok, ignore_merges = _byte_level_pre_tokenizer(
        _gguf_field(reader, "tokenizer.ggml.pre", "default"), source
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


def _literal(token: str, special: bool) -> AddedToken:
    """An added token matched verbatim in the raw text."""
    return AddedToken(token, special=special, normalized=False)


def sentencepiece_proto_from_gguf(reader: Any, source: str = "<gguf>") -> bytes:
    """A serialised SentencePiece BPE ModelProto from tokenizer.ggml.tokens / scores / token_type.

    llama.cpp's 'llama' tokenizer is SentencePiece BPE (merge the best-scoring pair first) on
    unnormalised text with whitespace escaped to U+2581, and a dummy space prefix unless
    tokenizer.ggml.add_space_prefix is false.
    """
    # Imported here: only this path needs protobuf.
    from sentencepiece import sentencepiece_model_pb2 as pb2

    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    scores = _gguf_field(reader, "tokenizer.ggml.scores")
    types = _gguf_field(reader, "tokenizer.ggml.token_type")
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
    norm.add_dummy_prefix = bool(_gguf_field(reader, "tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = bool(
        _gguf_field(reader, "tokenizer.ggml.remove_extra_whitespaces", False)
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
        reader = _open_gguf(pathlib.Path(path_or_reader))
        source = str(path_or_reader)
    else:
        reader = path_or_reader
        source = str(getattr(getattr(reader, "data", None), "filename", "<GGUF reader>"))
    kind = _gguf_field(reader, "tokenizer.ggml.model")
    special = {
        "bos_id": _gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_id": _gguf_field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_id": _gguf_field(reader, "tokenizer.ggml.padding_token_id"),
        "unk_id": _gguf_field(reader, "tokenizer.ggml.unknown_token_id"),
    }
    # llama.cpp's defaults when the file does not say: BOS for SentencePiece, none for BPE.
    add_bos = _gguf_field(reader, "tokenizer.ggml.add_bos_token", kind == "llama")
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


def _open_gguf(path: pathlib.Path) -> Any:
    """A ``gguf.GGUFReader`` on ``path``; CheckpointError when missing or not GGUF."""
    import gguf

    if not path.is_file():
        raise CheckpointError(f"{path}: GGUF file not found")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError / struct errors on a bad file
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from e


# ---------------------------------------------------------------------------------------------
# SentencePiece and Hugging Face folders


def _load_sp(source: str, **kwargs: Any) -> spm.SentencePieceProcessor:
    """A SentencePieceProcessor from ``model_file=`` or ``model_proto=``; CheckpointError if bad."""
    try:
        return spm.SentencePieceProcessor(**kwargs)
    except (RuntimeError, OSError) as e:
        raise CheckpointError(f"{source}: not a valid SentencePiece model ({e})") from e


def from_sentencepiece(model_file: PathLike) -> SentencePieceTokenizer:
    """A SentencePiece ``.model`` file; special ids from the model, BOS wanted if it has one."""
    path = pathlib.Path(model_file)
    if not path.is_file():
        raise CheckpointError(f"{path}: SentencePiece model file not found")
    sp = _load_sp(str(path), model_file=str(path))

    def opt(i: int) -> int | None:
        return None if i < 0 else i

    return SentencePieceTokenizer(
        sp,
        add_bos=sp.bos_id() >= 0,
        source=str(path),
        bos_id=opt(sp.bos_id()),
        eos_id=opt(sp.eos_id()),
        pad_id=opt(sp.pad_id()),
        unk_id=opt(sp.unk_id()),
    )


def read_json_object(path: pathlib.Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _content(value: Any) -> str | None:
    """A token string from a tokenizer_config value: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def from_byte_level_bpe(
    vocab_file: PathLike,
    merges_file: PathLike,
    added_tokens: dict[str, tuple[int, bool]] | None = None,
) -> HFTokenizer:
    """GPT-2 style byte-level BPE from ``vocab.json`` + ``merges.txt``.

    ``added_tokens`` maps token -> (id, special); each is matched literally in the text. A token
    absent from the vocabulary gets the given id, or the next free id when that is -1.
    ``<|endoftext|>`` is always special. No special ids are set; callers set them.
    """
    vocab_path, merges_path = pathlib.Path(vocab_file), pathlib.Path(merges_file)
    vocab = read_json_object(vocab_path)
    if not vocab:
        raise CheckpointError(f"{vocab_path}: missing or empty BPE vocabulary")
    if not merges_path.is_file():
        raise CheckpointError(f"{merges_path}: BPE merges file not found")
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    # The first line of a merges.txt is a '#version' header; blank lines carry no merge.
    merges = [tuple(ln.split(" ", 1)) for ln in lines if ln.strip() and not ln.startswith("#")]
    added_tokens = dict(added_tokens or {})
    if _GPT2_EOT in vocab:
        added_tokens.setdefault(_GPT2_EOT, (vocab[_GPT2_EOT], True))
    for token, (i, _) in added_tokens.items():
        if i >= 0:
            vocab.setdefault(token, i)
    try:
        core = HFTokenizerCore(models.BPE(vocab, merges))
    except Exception as e:  # tokenizers raises plain Exception for a merge outside the vocab
        raise CheckpointError(f"{merges_path}: merges do not match {vocab_path}: {e}") from e
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([_literal(t, True) for t, (_, s) in added_tokens.items() if s])
    core.add_tokens([_literal(t, False) for t, (_, s) in added_tokens.items() if not s])
    return HFTokenizer(core, add_bos=False, source=str(vocab_path.parent))


def _hf_added_tokens(config: dict, names: list[str]) -> dict[str, tuple[int, bool]]:
    """token -> (id, special) from tokenizer_config's added_tokens_decoder plus named specials."""
    added = {
        str(v["content"]): (int(k), bool(v.get("special", True)))
        for k, v in (config.get("added_tokens_decoder") or {}).items()
        if isinstance(v, dict) and "content" in v
    }
    for name in names:
        added.setdefault(name, (-1, True))
    return added


def from_hf_folder(folder: PathLike) -> Tokenizer:
    """A Hugging Face tokenizer folder: tokenizer.json, vocab.json + merges.txt, or tokenizer.model.

    Special tokens come from tokenizer_config.json, then special_tokens_map.json, then config.json
    (``*_token_id``), then the tokenizer itself (a SentencePiece model's ids; ``<|endoftext|>`` as
    bos / eos / unk of a vocab.json + merges.txt, as GPT-2's tokenizer does); ``add_bos`` from tokenizer_config.json's
    ``add_bos_token``, else from whether the tokenizer's post-processor adds BOS.
    """
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root}: tokenizer folder not found")
    tok_config = read_json_object(root / "tokenizer_config.json")
    special_map = read_json_object(root / "special_tokens_map.json")
    model_config = read_json_object(root / "config.json")
    named = [
        t
        for src in (tok_config, special_map)
        for k in ("bos_token", "eos_token", "pad_token", "unk_token")
        if (t := _content(src.get(k))) is not None
    ]
    named += [
        t
        for src in (tok_config, special_map)
        for v in src.get("additional_special_tokens") or []
        if (t := _content(v)) is not None
    ]

    if (root / "tokenizer.json").is_file():
        try:
            core = HFTokenizerCore.from_file(str(root / "tokenizer.json"))
        except Exception as e:  # tokenizers raises plain Exception on a malformed file
            raise CheckpointError(f"{root / 'tokenizer.json'}: unreadable ({e})") from e
        tok: Tokenizer = HFTokenizer(core, add_bos=False, source=str(root))
        gpt2_default = None
    elif (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
        tok = from_byte_level_bpe(
            root / "vocab.json", root / "merges.txt", _hf_added_tokens(tok_config, named)
        )
        gpt2_default = tok.token_to_id(_GPT2_EOT)
    elif (root / "tokenizer.model").is_file():
        tok = from_sentencepiece(root / "tokenizer.model")
        gpt2_default = None
    else:
        raise CheckpointError(
            f"{root}: no tokenizer.json, vocab.json + merges.txt, or tokenizer.model found"
        )
    tok.source = str(root)

    for name in ("bos", "eos", "pad", "unk"):
        i = _hf_special_id(tok, name, root, tok_config, special_map, model_config)
        if i is None and name != "pad":
            i = gpt2_default
        if i is not None:
            setattr(tok, f"{name}_id", i)
    if isinstance(tok_config.get("add_bos_token"), bool):
        tok.add_bos = tok_config["add_bos_token"]
    elif isinstance(tok, HFTokenizer):
        tok.add_bos = _post_processor_adds_bos(tok)
    return tok


def _hf_special_id(
    tok: Tokenizer, name: str, root: pathlib.Path, tok_config: dict, special_map: dict, config: dict
) -> int | None:
    """The id of special token ``name`` from the first config file that names it."""
    for fname, src in (
        ("tokenizer_config.json", tok_config),
        ("special_tokens_map.json", special_map),
    ):
        token = _content(src.get(f"{name}_token"))
        if token is not None:
            i = tok.token_to_id(token)
            if i is None:
                raise CheckpointError(
                    f"{root / fname}: {name}_token {token!r} is not in the tokenizer's vocabulary"
                )
            return i
    value = config.get(f"{name}_token_id")
    # config.json may list several EOS ids (e.g. end-of-turn too); the first is the main one.
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < tok.vocab_size:
            raise CheckpointError(
                f"{root / 'config.json'}: {name}_token_id={value} is outside the vocabulary "
                f"(size {tok.vocab_size})"
            )
        return value
    return None


def _post_processor_adds_bos(tok: HFTokenizer) -> bool:
    """Whether the tokenizer.json post-processor puts BOS first when special tokens are added."""
    if tok.bos_id is None:
        return False
    with_special = tok.core.encode("a", add_special_tokens=True).ids
    return with_special[:1] == [tok.bos_id] and len(with_special) > len(tok.encode("a"))


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
