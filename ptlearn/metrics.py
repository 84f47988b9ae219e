"""Task metrics over predicted and gold strings (SPEC.md section 5): pure functions, no model code.

Every score is a fraction in [0, 1] (SQuAD's official script prints percentages: x100 for those).
An empty input scores 0.0. Predictions and golds are matched by position.
"""

import collections
import re
import string
from collections.abc import Sequence

from ptlearn.errors import DataError

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_INTENT = re.compile(r"Intent:[ \t]*([^\n]*)")
_SLOTS = re.compile(r"Slots:[ \t]*([^\n]*)")
_SLOT = re.compile(r"(\w+)\s*\(([^()]*)\)")


def _check_lengths(preds: Sequence, golds: Sequence, what: str) -> None:
    """Raises a DataError when predictions and golds cannot be paired one to one."""
    if len(preds) != len(golds):
        raise DataError(
            f"{len(preds)} predictions but {len(golds)} {what}; "
            "the prediction file must have one line per example, in input order"
        )


def _mean(values: Sequence[float]) -> float:
    """The mean, 0.0 for no values."""
    return sum(values) / len(values) if values else 0.0


def accuracy(preds: Sequence[str], labels: Sequence[str]) -> float:
    """Share of predictions equal to their label after stripping surrounding whitespace.

    Args:
      preds, labels: [N] strings, paired by position.
    """
    _check_lengths(preds, labels, "labels")
    return _mean([float(p.strip() == y.strip()) for p, y in zip(preds, labels, strict=True)])


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation, drop articles a/an/the, and collapse
    whitespace (in the official script's order).
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: str, gold: str) -> float:
    """SQuAD v1.1 token F1 of one prediction against one gold answer (0.0 when nothing overlaps,
    including when both are empty after normalisation, as in the v1.1 script).
    """
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    overlap = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _check_golds(gold_answers: Sequence[Sequence[str]]) -> None:
    """Rejects a bare string where a list of gold answers is expected, and an empty list."""
    for index, golds in enumerate(gold_answers):
        if isinstance(golds, str) or not golds:
            raise DataError(
                f"example {index}: gold answers must be a non-empty list of strings, got {golds!r}"
            )


def exact_match(preds: Sequence[str], gold_answers: Sequence[Sequence[str]]) -> float:
    """SQuAD v1.1 exact match: share of predictions whose normalised text equals that of any of
    their gold answers.

    Args:
      preds: [N] strings; gold_answers: [N] non-empty lists of gold answer strings.
    """
    _check_lengths(preds, gold_answers, "gold answer lists")
    _check_golds(gold_answers)
    return _mean(
        [
            float(any(normalize_answer(p) == normalize_answer(g) for g in golds))
            for p, golds in zip(preds, gold_answers, strict=True)
        ]
    )


def f1(preds: Sequence[str], gold_answers: Sequence[Sequence[str]]) -> float:
    """SQuAD v1.1 F1: mean over examples of the best token F1 against any gold answer.

    Args:
      preds: [N] strings; gold_answers: [N] non-empty lists of gold answer strings.
    """
    _check_lengths(preds, gold_answers, "gold answer lists")
    _check_golds(gold_answers)
    return _mean(
        [max(_token_f1(p, g) for g in golds) for p, golds in zip(preds, gold_answers, strict=True)]
    )


def parse_intent_and_slots(text: str) -> tuple[str | None, list[tuple[str, str]]]:
    """Reads ``"...Intent: alarm_set\\nSlots: time(five am), date(this week)"``.

    Tolerant of what a model may generate: the first ``Intent:`` and ``Slots:`` lines are used,
    anything else is ignored, and a missing part gives None (intent) or no slots.

    Returns:
      (intent or None, [(slot_type, value)] with whitespace collapsed; [] for ``Slots: None``).
    """
    intent_match = _INTENT.search(text)
    intent = intent_match.group(1).strip() if intent_match else None
    slots_match = _SLOTS.search(text)
    slots = []
    if slots_match:
        slots = [
            (slot_type, " ".join(value.split()))
            for slot_type, value in _SLOT.findall(slots_match.group(1))
        ]
    return intent or None, slots


def intent_accuracy(preds: Sequence[str], labels: Sequence[str]) -> float:
    """Share of predictions whose parsed intent equals the label's; an unparsable prediction
    counts as wrong.

    Args:
      preds, labels: [N] strings in the ``Intent: ...\\nSlots: ...`` format.
    """
    _check_lengths(preds, labels, "labels")
    scores = []
    for pred, label in zip(preds, labels, strict=True):
        pred_intent, gold_intent = parse_intent_and_slots(pred)[0], parse_intent_and_slots(label)[0]
        scores.append(float(pred_intent is not None and pred_intent == gold_intent))
    return _mean(scores)


def slot_counts(preds: Sequence[str], labels: Sequence[str]) -> tuple[int, int, int]:
    """Micro counts over (slot_type, value) pairs: (matched, predicted, gold).

    Matching is per example and by multiset, so a slot predicted twice matches one gold once.
    """
    _check_lengths(preds, labels, "labels")
    matched = predicted = gold = 0
    for pred, label in zip(preds, labels, strict=True):
        pred_slots = collections.Counter(parse_intent_and_slots(pred)[1])
        gold_slots = collections.Counter(parse_intent_and_slots(label)[1])
        matched += sum((pred_slots & gold_slots).values())
        predicted += sum(pred_slots.values())
        gold += sum(gold_slots.values())
    return matched, predicted, gold


def slot_f1(preds: Sequence[str], labels: Sequence[str]) -> float:
    """Micro-averaged F1 over (slot_type, value) pairs of all examples.

    When neither predictions nor labels hold any slot there is nothing to get wrong: 1.0 if
    there are examples, 0.0 for empty inputs.
    """
    matched, predicted, gold = slot_counts(preds, labels)
    if predicted == 0 and gold == 0:
        return 1.0 if preds else 0.0
    if matched == 0:
        return 0.0
    precision, recall = matched / predicted, matched / gold
    return 2 * precision * recall / (precision + recall)


def _field(examples: Sequence[dict], key: str, taskname: str) -> list:
    """The ``key`` field of every example, or a DataError naming the first example without it."""
    for index, example in enumerate(examples):
        if key not in example:
            raise DataError(
                f"task {taskname!r}: example {index} has no {key!r} field to score against "
                f"(it has {sorted(example)})"
            )
    return [example[key] for example in examples]


def _squad_golds(examples: Sequence[dict], answer_field: str, taskname: str) -> list[list[str]]:
    """Gold answers per example: the ``answers`` list when present, else ``[answer_field]``."""
    golds = []
    for index, example in enumerate(examples):
        if "answers" in example:
            golds.append(list(example["answers"]))
        elif answer_field in example:
            golds.append([example[answer_field]])
        else:
            raise DataError(
                f"task {taskname!r}: example {index} has neither 'answers' nor "
                f"{answer_field!r} to score against (it has {sorted(example)})"
            )
    return golds


def task_metrics(
    metric: str,
    preds: Sequence[str],
    examples: Sequence[dict],
    *,
    answer_field: str,
    taskname: str = "",
) -> dict[str, float]:
    """The metrics a task's template names (its `metric` key, SPEC.md section 5).

    - ``accuracy``: predictions equal to ``answer_field`` after stripping whitespace.
    - ``exact_match``: SQuAD's normalised exact match against ``answer_field``.
    - ``squad``: exact_match and f1 against ``answers`` (all gold answers) or else
      ``answer_field``.
    - ``intent_slot``: intent_accuracy and slot_f1 of ``answer_field``.

    Args:
      preds: [N] generated strings; examples: [N] task records (dicts), in the same order;
      taskname: for messages.

    Returns:
      dict: metric name -> value in [0, 1], plus the int counts ``n`` (examples) and, for
      intent_slot, ``slots_matched`` / ``slots_predicted`` / ``slots_gold``.
    """
    _check_lengths(preds, examples, f"examples of task {taskname!r}")
    if metric == "squad":
        golds = _squad_golds(examples, answer_field, taskname)
        metrics = {"exact_match": exact_match(preds, golds), "f1": f1(preds, golds)}
    elif metric == "intent_slot":
        labels = _field(examples, answer_field, taskname)
        matched, predicted, gold = slot_counts(preds, labels)
        metrics = {
            "intent_accuracy": intent_accuracy(preds, labels),
            "slot_f1": slot_f1(preds, labels),
            "slots_matched": matched,
            "slots_predicted": predicted,
            "slots_gold": gold,
        }
    elif metric == "exact_match":
        golds = [[str(g)] for g in _field(examples, answer_field, taskname)]
        metrics = {"exact_match": exact_match(preds, golds)}
    elif metric == "accuracy":
        metrics = {"accuracy": accuracy(preds, _field(examples, answer_field, taskname))}
    else:
        raise ValueError(f"unknown metric {metric!r}")  # templates validate it: a bug here
    metrics["n"] = len(preds)
    return metrics
