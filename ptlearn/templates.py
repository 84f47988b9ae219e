"""Task templates: parsing and validation (SPEC section 3).

A template such as ``"<|VIRTUAL_PROMPT_0|> {sentence} sentiment:{label}"`` is parsed once into
segments (literal text, ``{field}``, virtual marker) and checked against its task's keys: the
virtual groups' sizes, the answer field last, the truncate field, the metric. Encoding an
example with it is ptlearn.encoding's job.

Template braces follow ``str.format``: ``{{`` and ``}}`` are literal braces; format specs and
conversions (``{x:>3}``, ``{x!r}``) are rejected.
"""

import dataclasses
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ptlearn.errors import TemplateError, did_you_mean

_MARKER = re.compile(r"<\|VIRTUAL_PROMPT_(\d+)\|>")
_MARKER_PREFIX = "<|VIRTUAL_PROMPT"

_REQUIRED_KEYS = (
    "taskname",
    "prompt_template",
    "total_virtual_tokens",
    "virtual_token_splits",
    "answer_field",
)
# How a task's predictions are scored (metrics.task_metrics): exact label match, SQuAD's
# normalised exact match, SQuAD's exact match + token F1, intent accuracy + slot F1.
METRICS = ("accuracy", "exact_match", "squad", "intent_slot")
_OPTIONAL_KEYS = {
    "truncate_field": None,
    "answer_only_loss": False,
    "fields": (),
    "metric": "accuracy",
}  # NeMo's defaults for the optional keys it has


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


def is_int(value: Any) -> bool:
    # bool is an int subclass, but `true` as a token count is a typo, not a number.
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_types(t: TaskTemplate) -> None:
    name = t.taskname
    if not isinstance(name, str) or not name:
        raise TemplateError(f"task template taskname must be a non-empty string, got {name!r}")
    if not isinstance(t.prompt_template, str):
        raise _fail(name, f"prompt_template must be a string, got {t.prompt_template!r}")
    if not is_int(t.total_virtual_tokens) or t.total_virtual_tokens < 0:
        raise _fail(
            name,
            f"total_virtual_tokens must be an integer >= 0 (0: no virtual prompt, e.g. zero-shot "
            f"or in-context), got {t.total_virtual_tokens!r}",
        )
    splits = t.virtual_token_splits
    if isinstance(splits, str | bytes) or not isinstance(splits, Sequence):
        raise _fail(name, f"virtual_token_splits must be a list of integers, got {splits!r}")
    if (not splits and t.total_virtual_tokens) or not all(is_int(s) and s >= 1 for s in splits):
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
