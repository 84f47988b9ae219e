"""SentencePiece tokenizers (a `.model` file, or a model built from GGUF metadata)."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Sequence
from typing import Any

import sentencepiece as spm

from ptlearn.errors import CheckpointError
from ptlearn.tokenizers.base import PathLike, Tokenizer


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
