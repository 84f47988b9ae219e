"""Task templates: parsing, validation, and encoding examples into ids + virtual slots + loss mask.

A template such as ``"<|VIRTUAL_PROMPT_0|> {sentence} sentiment:{label}"`` is parsed once into
segments (literal text, ``{field}``, virtual marker). Encoding an example fills the fields and
tokenises it piece by piece:

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

Template braces follow ``str.format``: ``{{`` and ``}}`` are literal braces; format specs and
conversions (``{x:>3}``, ``{x!r}``) are rejected.
"""

import dataclasses
import itertools
import logging
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from ptlearn.errors import ConfigError, DataError, TemplateError, did_you_mean

_MARKER = re.compile(r"<\|VIRTUAL_PROMPT_(\d+)\|>")
_MARKER_PREFIX = "<|VIRTUAL_PROMPT"
# Id written at virtual positions; the model overwrites those embeddings, any valid id works.
VIRTUAL_FILL_ID = 0
# A field longer than this many characters per token of max_seq_length cannot fit: it is cut
# (the truncate field) or its example dropped before the tokenizer sees it (a 50 MB line).
MAX_FIELD_CHARS_PER_TOKEN = 16

_REQUIRED_KEYS = (
    "taskname",
    "prompt_template",
    "total_virtual_tokens",
    "virtual_token_splits",
    "answer_field",
)
# NeMo's defaults for the optional keys.
# How a task's predictions are scored (metrics.task_metrics): exact label match, SQuAD's
# normalised exact match, SQuAD's exact match + token F1, intent accuracy + slot F1.
METRICS = ("accuracy", "exact_match", "squad", "intent_slot")
_OPTIONAL_KEYS = {
    "truncate_field": None,
    "answer_only_loss": False,
    "fields": (),
    "metric": "accuracy",
}

logger = logging.getLogger(__name__)


class Tokenizer(Protocol):
    """What encoding needs from a tokenizer (``ptlearn.tokenizers`` provides it)."""

    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, never adding BOS or EOS."""
        ...


@dataclasses.dataclass(frozen=True)
class Text:
    """Literal template text."""

    text: str


@dataclasses.dataclass(frozen=True)
class Field:
    """A ``{name}`` slot filled from the example."""

    name: str


@dataclasses.dataclass(frozen=True)
class Virtual:
    """A ``<|VIRTUAL_PROMPT_n|>`` marker: the n-th group of virtual tokens."""

    group: int


Segment = Text | Field | Virtual


@dataclasses.dataclass(frozen=True)
class TaskTemplate:
    """One task's template, validated on construction (raises TemplateError).

    ``segments`` is the parsed ``prompt_template``; ``virtual_token_splits[n]`` is the size of
    group n, whose virtual tokens have indices ``sum(splits[:n]) .. sum(splits[:n+1]) - 1``.
    """

    taskname: str
    prompt_template: str
    total_virtual_tokens: int
    virtual_token_splits: tuple[int, ...]
    answer_field: str
    truncate_field: str | None = None
    answer_only_loss: bool = False
    # (template field, source column) pairs: the columns a CSV / TFDS data set names otherwise.
    fields: tuple[tuple[str, str], ...] = ()
    metric: str = "accuracy"  # one of METRICS
    segments: tuple[Segment, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_types(self)
        # Normalise numpy / ConfigDict scalars so templates compare and serialise as plain values.
        object.__setattr__(self, "virtual_token_splits", tuple(map(int, self.virtual_token_splits)))
        object.__setattr__(self, "total_virtual_tokens", int(self.total_virtual_tokens))
        object.__setattr__(self, "answer_only_loss", bool(self.answer_only_loss))
        object.__setattr__(self, "fields", _field_pairs(self.taskname, self.fields))
        segments = _parse_segments(self.taskname, self.prompt_template)
        _validate(self, segments)
        object.__setattr__(self, "segments", segments)
        unknown = sorted({f for f, _ in self.fields} - set(self.field_names))
        if unknown:
            raise _fail(
                self.taskname,
                f"fields maps {unknown}, which the template does not read (it reads "
                f"{list(self.field_names)})",
            )

    @property
    def field_names(self) -> tuple[str, ...]:
        """Every field the template reads, in order of first use (the answer field last)."""
        names = [s.name for s in self.segments if isinstance(s, Field)]
        return tuple(dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        """The template as plain config values; ``parse_task_templates([t.to_dict()])`` is t."""
        return {
            "taskname": self.taskname,
            "prompt_template": self.prompt_template,
            "total_virtual_tokens": self.total_virtual_tokens,
            "virtual_token_splits": list(self.virtual_token_splits),
            "truncate_field": self.truncate_field,
            "answer_only_loss": self.answer_only_loss,
            "answer_field": self.answer_field,
            "fields": dict(self.fields),
            "metric": self.metric,
        }


def _field_pairs(taskname: str, fields: Any) -> tuple[tuple[str, str], ...]:
    """`fields` ({template field: source column}, or its pairs) as sorted pairs of strings."""
    if hasattr(fields, "to_dict"):  # a ConfigDict
        fields = fields.to_dict()
    pairs = list(fields.items()) if isinstance(fields, Mapping) else list(fields or ())
    if not all(
        isinstance(p, tuple | list) and len(p) == 2 and all(isinstance(x, str) and x for x in p)
        for p in pairs
    ):
        raise _fail(taskname, f"fields must map template fields to column names, got {fields!r}")
    return tuple(sorted((str(a), str(b)) for a, b in pairs))


def _fail(taskname: str, problem: str) -> TemplateError:
    return TemplateError(f"task template '{taskname}': {problem}")


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `true` as a token count is a typo, not a number.
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_types(t: TaskTemplate) -> None:
    name = t.taskname
    if not isinstance(name, str) or not name:
        raise TemplateError(f"task template taskname must be a non-empty string, got {name!r}")
    if not isinstance(t.prompt_template, str):
        raise _fail(name, f"prompt_template must be a string, got {t.prompt_template!r}")
    if not _is_int(t.total_virtual_tokens) or t.total_virtual_tokens < 0:
        raise _fail(
            name,
            f"total_virtual_tokens must be an integer >= 0 (0: no virtual prompt, e.g. zero-shot "
            f"or in-context), got {t.total_virtual_tokens!r}",
        )
    splits = t.virtual_token_splits
    if isinstance(splits, str | bytes) or not isinstance(splits, Sequence):
        raise _fail(name, f"virtual_token_splits must be a list of integers, got {splits!r}")
    if (not splits and t.total_virtual_tokens) or not all(_is_int(s) and s >= 1 for s in splits):
        raise _fail(name, f"virtual_token_splits must be positive integers, got {list(splits)}")
    if not isinstance(t.answer_field, str) or not t.answer_field:
        raise _fail(name, f"answer_field must be a non-empty string, got {t.answer_field!r}")
    if t.truncate_field is not None and not isinstance(t.truncate_field, str):
        raise _fail(name, f"truncate_field must be a string or null, got {t.truncate_field!r}")
    if not isinstance(t.answer_only_loss, bool | np.bool_):
        raise _fail(name, f"answer_only_loss must be true or false, got {t.answer_only_loss!r}")
    if t.metric not in METRICS:
        raise _fail(
            name,
            f"metric={t.metric!r}: use one of {', '.join(METRICS)}{did_you_mean(t.metric, METRICS)}",
        )


def _parse_segments(taskname: str, template: str) -> tuple[Segment, ...]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise _fail(
            taskname, f"prompt_template {template!r}: {e}; write {{{{ or }}}} for a literal brace"
        ) from e
    segments: list[Segment] = []
    for literal, field_name, spec, conversion in parsed:
        segments.extend(_split_markers(taskname, literal))
        if field_name is None:
            continue
        if not field_name:
            raise _fail(taskname, "prompt_template has an empty field '{}'; name the field")
        if spec or conversion:
            raise _fail(
                taskname, f"field {{{field_name}}} has a format spec or conversion; remove it"
            )
        segments.append(Field(field_name))
    return tuple(segments)


def _split_markers(taskname: str, literal: str) -> list[Segment]:
    out: list[Segment] = []
    pos = 0
    for m in _MARKER.finditer(literal):
        out.append(Text(literal[pos : m.start()]))
        out.append(Virtual(int(m.group(1))))
        pos = m.end()
    out.append(Text(literal[pos:]))
    for seg in out:
        if isinstance(seg, Text) and _MARKER_PREFIX in seg.text:
            raise _fail(
                taskname,
                f"malformed virtual marker in {seg.text!r}; write <|VIRTUAL_PROMPT_n|>",
            )
    return [s for s in out if not (isinstance(s, Text) and not s.text)]


def _validate(t: TaskTemplate, segments: tuple[Segment, ...]) -> None:
    name, splits = t.taskname, t.virtual_token_splits
    if sum(splits) != t.total_virtual_tokens:
        raise _fail(
            name,
            f"virtual_token_splits {list(splits)} sum to {sum(splits)} but "
            f"total_virtual_tokens is {t.total_virtual_tokens}",
        )
    groups = [s.group for s in segments if isinstance(s, Virtual)]
    for group, count in Counter(groups).items():
        if count > 1:
            raise _fail(name, f"<|VIRTUAL_PROMPT_{group}|> appears {count} times; use it once")
    if len(groups) != len(splits):
        raise _fail(
            name,
            f"prompt_template has {len(groups)} virtual marker(s) but virtual_token_splits "
            f"{list(splits)} has {len(splits)} group(s)",
        )
    if sorted(groups) != list(range(len(splits))):
        raise _fail(
            name,
            f"virtual markers are numbered {sorted(groups)}; number them 0..{len(splits) - 1}",
        )
    fields = [s.name for s in segments if isinstance(s, Field)]
    answer = t.answer_field
    if answer not in fields:
        raise _fail(
            name, f"answer_field '{answer}' is not in prompt_template; end it with {{{answer}}}"
        )
    if fields.count(answer) > 1:
        raise _fail(name, f"answer field {{{answer}}} appears {fields.count(answer)} times")
    after = segments[[s == Field(answer) for s in segments].index(True) + 1 :]
    late = [s for s in after if not isinstance(s, Text)]
    if late:
        what = f"{{{late[0].name}}}" if isinstance(late[0], Field) else "a virtual marker"
        raise _fail(name, f"answer field {{{answer}}} must come last, but {what} follows it")
    trunc = t.truncate_field
    if trunc is not None:
        if trunc == answer:
            raise _fail(
                name, f"truncate_field '{trunc}' is the answer field; the answer is never cut"
            )
        if trunc not in fields:
            raise _fail(name, f"truncate_field '{trunc}' is not a field of prompt_template")
        if fields.count(trunc) > 1:
            raise _fail(name, f"truncate_field {{{trunc}}} appears {fields.count(trunc)} times")


def _entry_dict(entry: Any, position: int) -> dict[str, Any]:
    if isinstance(entry, Mapping):
        return dict(entry)
    if hasattr(entry, "to_dict"):  # an ml_collections ConfigDict is not a Mapping
        return dict(entry.to_dict())
    raise TemplateError(f"task_templates[{position}] must be a mapping of keys, got {entry!r}")


def parse_task_templates(entries: Iterable[Any]) -> dict[str, TaskTemplate]:
    """Validated templates keyed by taskname, from dict-likes (Mapping or ConfigDict).

    Required keys: taskname, prompt_template, total_virtual_tokens, virtual_token_splits,
    answer_field; optional: truncate_field (default null), answer_only_loss (default false),
    fields (default none), metric (default accuracy).
    Raises TemplateError naming the task for unknown or missing keys, duplicate tasknames and
    every invalid template.
    """
    templates: dict[str, TaskTemplate] = {}
    for position, entry in enumerate(entries):
        values = _entry_dict(entry, position)
        label = f"'{values['taskname']}'" if "taskname" in values else f"#{position}"
        unknown = sorted(set(values) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
        if unknown:
            allowed = ", ".join([*_REQUIRED_KEYS, *_OPTIONAL_KEYS])
            raise TemplateError(
                f"task template {label}: unknown key(s) {unknown}; known: {allowed}"
            )
        missing = [k for k in _REQUIRED_KEYS if k not in values]
        if missing:
            raise TemplateError(f"task template {label}: missing key(s) {missing}")
        template = TaskTemplate(**{**_OPTIONAL_KEYS, **values})
        if template.taskname in templates:
            raise _fail(template.taskname, "taskname is defined twice in task_templates")
        templates[template.taskname] = template
    return templates


def _field_text(template: TaskTemplate, example: Mapping[str, Any], name: str, where: str) -> str:
    value = example[name]
    if isinstance(value, str):
        return value
    if _is_int(value) or isinstance(value, float):
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
    if not _is_int(max_seq_length) or max_seq_length < 1:
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
