"""Byte-level BPE tokenizers (GPT-2 family) on Hugging Face `tokenizers`, and the loaders of
Hugging Face tokenizer folders (tokenizer.json, vocab.json + merges.txt, or tokenizer.model)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizerCore

from ptlearn.errors import CheckpointError
from ptlearn.tokenizers.base import PathLike, Tokenizer
from ptlearn.tokenizers.sentencepiece_model import from_sentencepiece

# GPT-2's end-of-text token: special in every GPT-2 vocabulary, and its bos / eos / unk by default.
_GPT2_EOT = "<|endoftext|>"


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


def _literal(token: str, special: bool) -> AddedToken:
    """An added token matched verbatim in the raw text."""
    return AddedToken(token, special=special, normalized=False)


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
