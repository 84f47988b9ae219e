"""The tokenizer interface every implementation follows (byte_level.py, sentencepiece_model.py)."""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence

PathLike = str | os.PathLike


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

    @property
    def fill_id(self) -> int:
        """The id padded slots hold: ``pad_id``, else 0 (attention and loss mask them anyway)."""
        return 0 if self.pad_id is None else self.pad_id

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
