"""Encoding examples with their task template into ids + virtual slots + loss mask.

A parsed template (ptlearn.templates) is filled with an example and tokenised piece by piece:

- the filled template is cut at every virtual marker, around ``truncate_field`` and where the
  answer field starts; each text piece is tokenised on its own, so the answer boundary is exact
  and only the truncate field's tokens are ever cut;
- where two text pieces meet, the left one's trailing whitespace moves to the start of the right
  one (``"sentiment: "`` + ``"positive"`` becomes ``"sentiment:"`` + ``" positive"``), which keeps
  the ids close to tokenising the whole text at once and gives training and inference the same
  prompt ids;
- literal text after the answer field belongs to the answer.

Layout of one encoded example of length T (P virtual tokens for its task)::

    [BOS]? prompt pieces and virtual groups | answer pieces [EOS]?   (inference stops at |)

Loss-mask alignment: ``loss_mask[t]`` says whether *predicting* ``ids[t]`` (from positions < t)
counts, so a causal LM's loss is ``nll(logits[:, :-1], ids[:, 1:])`` weighted by
``loss_mask[:, 1:]``; ``loss_mask[0]`` is always 0 and virtual positions are always 0.
"""

import dataclasses
import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np

from ptlearn.errors import ConfigError, DataError, did_you_mean
from ptlearn.templates import TaskTemplate, Text, Virtual, is_int

# Id written at virtual positions; the model overwrites those embeddings, any valid id works.
VIRTUAL_FILL_ID = 0
# A field longer than this many characters per token of max_seq_length cannot fit: it is cut
# (the truncate field) or its example dropped before the tokenizer sees it (a 50 MB line).
MAX_FIELD_CHARS_PER_TOKEN = 16

logger = logging.getLogger(__name__)


class Tokenizer(Protocol):
    """What encoding needs from a tokenizer (``ptlearn.tokenizers`` provides it)."""

    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, never adding BOS or EOS."""
        ...


def _field_text(template: TaskTemplate, example: Mapping[str, Any], name: str, where: str) -> str:
    value = example[name]
    if isinstance(value, str):
        return value
    if is_int(value) or isinstance(value, float):
        return str(value)
    raise DataError(
        f"{where}: task '{template.taskname}' field '{name}' must be a string, "
        f"got {type(value).__name__} {value!r}"
    )


def check_example_fields(
    template: TaskTemplate, example: Mapping[str, Any], where: str, *, for_inference: bool = False
) -> None:
    """Raise DataError (prefixed by ``where``, e.g. "train.jsonl line 7") if ``example`` lacks a
    field the template reads or holds a non-text value there; at inference the answer is not
    needed."""
    for name in template.field_names:
        if for_inference and name == template.answer_field:
            continue
        if name not in example:
            have = ", ".join(sorted(map(ascii, example))) or "none"
            raise DataError(
                f"{where}: task {ascii(template.taskname)} needs field {ascii(name)} (the "
                f"example has: {have}){did_you_mean(name, map(str, example))}; fix the data or "
                "the task's prompt_template"
            )
        _field_text(template, example, name, where)


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedExample:
    """One example as arrays of length T.

    ids: [T] int32 (VIRTUAL_FILL_ID at virtual positions); virtual_index: [T] int32, the task's
    virtual token 0..P-1 at each virtual position, -1 elsewhere; loss_mask: [T] float32, 1 where
    predicting ids[t] counts (see the module docstring); answer_start: index of the first answer
    token (len(ids) at inference); line_no: the example's line in its file, if known.
    """

    taskname: str
    ids: np.ndarray
    virtual_index: np.ndarray
    loss_mask: np.ndarray
    answer_start: int
    truncated: bool = False
    line_no: int | None = None


def slice_example(e: EncodedExample, start: int, stop: int | None = None) -> EncodedExample:
    """Tokens start..stop of an encoded example, its answer start moved with them (a cached
    prefix cut off the front, or a prompt cut off before its answer)."""
    return dataclasses.replace(
        e,
        ids=e.ids[start:stop],
        virtual_index=e.virtual_index[start:stop],
        loss_mask=e.loss_mask[start:stop],
        answer_start=max(e.answer_start - start, 0),
    )


class _Piece(NamedTuple):
    kind: str  # "text" | "truncate" | "answer" | "virtual"
    text: str = ""
    group: int = -1  # virtual group number, for kind "virtual"


def _pieces(
    template: TaskTemplate, example: Mapping[str, Any], where: str, for_inference: bool
) -> list[_Piece]:
    """The filled template cut at virtual markers, around the truncate field and at the answer."""
    pieces: list[_Piece] = []
    buffer: list[str] = []

    def flush(kind: str) -> None:
        pieces.append(_Piece(kind, "".join(buffer)))
        buffer.clear()

    for seg in template.segments:
        if isinstance(seg, Virtual):
            flush("text")
            pieces.append(_Piece("virtual", group=seg.group))
        elif isinstance(seg, Text):
            buffer.append(seg.text)
        elif seg.name == template.answer_field:
            flush("text")
            buffer.append("" if for_inference else _field_text(template, example, seg.name, where))
        elif seg.name == template.truncate_field:
            flush("text")
            buffer.append(_field_text(template, example, seg.name, where))
            flush("truncate")
        else:
            buffer.append(_field_text(template, example, seg.name, where))
    flush("answer")  # validation put the answer field last; literal text after it joins it
    # Where two text pieces meet, trailing whitespace joins the right piece (BPE attaches
    # spaces to the following word), so the answer starts with " positive".
    for i in range(len(pieces) - 1):
        left, right = pieces[i], pieces[i + 1]
        if left.kind != "virtual" and right.kind != "virtual":
            stripped = left.text.rstrip()
            pieces[i] = left._replace(text=stripped)
            pieces[i + 1] = right._replace(text=left.text[len(stripped) :] + right.text)
    return pieces


def encode_example(
    template: TaskTemplate,
    example: Mapping[str, Any],
    tokenizer: Tokenizer,
    *,
    max_seq_length: int,
    add_eos: bool,
    add_bos: bool,
    for_inference: bool = False,
    where: str = "example",
    line_no: int | None = None,
) -> EncodedExample | None:
    """Encode one example (see the module docstring for the layout and loss alignment).

    Too long for ``max_seq_length``: only ``truncate_field``'s tokens are cut from their end;
    returns None when there is no truncate field or cutting it all is not enough. At inference
    the answer (and EOS) are left out and ``max_seq_length`` bounds the prompt alone, so pass
    the room left for generation. Raises DataError for a missing or non-text field.
    """
    if not is_int(max_seq_length) or max_seq_length < 1:
        raise ConfigError(f"max_seq_length must be a positive integer, got {max_seq_length!r}")
    check_example_fields(template, example, where, for_inference=for_inference)
    starts = [0, *itertools.accumulate(template.virtual_token_splits)]
    parts: list[tuple[str, list[int]]] = []  # (kind, ids); virtual ids become virtual_index
    if add_bos:
        if tokenizer.bos_id is None:
            raise ConfigError("add_bos is set but the tokenizer has no BOS token; unset add_bos")
        parts.append(("text", [tokenizer.bos_id]))
    for piece in _pieces(template, example, where, for_inference):
        if piece.kind == "virtual":
            group = piece.group
            parts.append(("virtual", list(range(starts[group], starts[group + 1]))))
        elif piece.kind != "answer" or not for_inference:
            text = piece.text
            if len(text) > MAX_FIELD_CHARS_PER_TOKEN * max_seq_length:
                if piece.kind != "truncate":
                    return None  # cannot fit: dropped (counted) before any tokenising
                text = text[: MAX_FIELD_CHARS_PER_TOKEN * max_seq_length]  # the kept head
            # Filled templates are text: a special token's name in a value (or in the
            # template) stays text; BOS and EOS are ids ptlearn adds itself.
            encode = _literal_encoder(tokenizer)
            parts.append((piece.kind, list(encode(text)) if text else []))
    if add_eos and not for_inference:
        if tokenizer.eos_id is None:
            raise ConfigError("add_eos is set but the tokenizer has no EOS token; unset add_eos")
        parts.append(("eos", [tokenizer.eos_id]))

    excess = sum(len(p) for _, p in parts) - max_seq_length
    truncated = False
    if excess > 0:
        cut = [i for i, (kind, p) in enumerate(parts) if kind == "truncate" and len(p) >= excess]
        if not cut:
            return None
        kind, p = parts[cut[0]]
        parts[cut[0]] = (kind, p[: len(p) - excess])
        truncated = True

    ids, virtual_index, loss_mask = [], [], []
    answer_start = None
    for kind, p in parts:
        if kind == "answer":
            answer_start = len(ids)
        is_virtual = kind == "virtual"
        ids.extend([VIRTUAL_FILL_ID] * len(p) if is_virtual else p)
        virtual_index.extend(p if is_virtual else [-1] * len(p))
        counts = kind in ("answer", "eos") or not (template.answer_only_loss or is_virtual)
        loss_mask.extend([float(counts and not for_inference)] * len(p))
    if loss_mask:
        loss_mask[0] = 0.0  # nothing predicts the first token
    return EncodedExample(
        taskname=template.taskname,
        ids=np.asarray(ids, np.int32),
        virtual_index=np.asarray(virtual_index, np.int32),
        loss_mask=np.asarray(loss_mask, np.float32),
        answer_start=len(ids) if answer_start is None or for_inference else answer_start,
        truncated=truncated,
        line_no=line_no,
    )


def _literal_encoder(tokenizer: Any) -> Any:
    """`encode_text` (special-token names stay text), or `encode` for tokenizers without
    special tokens to match (the test stubs)."""
    return getattr(tokenizer, "encode_text", tokenizer.encode)


@dataclasses.dataclass
class EncodeStats:
    """Per-task counts: ``encoded`` kept (truncated ones included), ``truncated`` kept after
    cutting the truncate field, ``dropped`` too long even so; ``dropped_lines`` their lines."""

    encoded: Counter = dataclasses.field(default_factory=Counter)
    truncated: Counter = dataclasses.field(default_factory=Counter)
    dropped: Counter = dataclasses.field(default_factory=Counter)
    dropped_lines: list[int] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line per task: "squad: 97 encoded (3 truncated), 2 dropped as too long"."""
        tasks = sorted(set(self.encoded) | set(self.dropped))
        return "\n".join(
            f"{t}: {self.encoded[t]} encoded ({self.truncated[t]} truncated), "
            f"{self.dropped[t]} dropped as too long"
            for t in tasks
        )


def encode_dataset(
    records: Iterable[tuple[int, Mapping[str, Any]]],
    templates: Mapping[str, TaskTemplate],
    tokenizer: Tokenizer,
    *,
    max_seq_length: int,
    add_eos: bool,
    add_bos: bool,
    for_inference: bool = False,
    source: str = "<records>",
) -> tuple[list[EncodedExample], EncodeStats]:
    """Encode ``(line_no, record)`` pairs read from the file named ``source``.

    Returns the kept examples in input order (each with its ``line_no``) and per-task counts;
    logs one warning when examples were dropped. Raises DataError naming file and line for a
    record without ``taskname``, with an unknown task (listing the known ones), or lacking a
    field its template needs.
    """
    examples: list[EncodedExample] = []
    stats = EncodeStats()
    for line_no, record in records:
        where = f"{source}:{line_no}"  # the same form as ptlearn.data.jsonl's errors
        if not isinstance(record, Mapping) or "taskname" not in record:
            raise DataError(f"{where}: each example needs a 'taskname' field")
        taskname = record["taskname"]
        if not isinstance(taskname, str) or taskname not in templates:
            known = ", ".join(sorted(templates)) or "none"
            raise DataError(
                f"{where}: unknown taskname {ascii(taskname)}"
                f"{did_you_mean(taskname, templates)}; the task templates define: {known}"
            )
        encoded = encode_example(
            templates[taskname],
            record,
            tokenizer,
            max_seq_length=max_seq_length,
            add_eos=add_eos,
            add_bos=add_bos,
            for_inference=for_inference,
            where=where,
            line_no=line_no,
        )
        if encoded is None:
            stats.dropped[taskname] += 1
            stats.dropped_lines.append(line_no)
            continue
        stats.encoded[taskname] += 1
        stats.truncated[taskname] += encoded.truncated
        examples.append(encoded)
    if stats.dropped_lines:
        lines = ", ".join(map(str, stats.dropped_lines[:10]))
        logger.warning(
            "%s: dropped %d example(s) longer than max_seq_length=%d (lines %s%s)\n%s",
            source,
            len(stats.dropped_lines),
            max_seq_length,
            lines,
            ", ..." if len(stats.dropped_lines) > 10 else "",
            stats.summary(),
        )
    return examples, stats
