"""NLU Evaluation Data (Liu et al. 2019, "Assistant Benchmarking") -> intent + slot records.

Raw format (cross-validation fold ``KFold_1``): ``trainset/*.csv`` and ``testset/csv/*.csv``,
';'-separated with a header. The intent is ``<scenario>_<intent>``; slots are marked inline in
``answer_annotation`` as ``[slot_type : words]``.
"""

import collections
import csv
import pathlib
import re

from ptlearn.data.prepare import DEFAULT_SEED, Conversion, locate_raw_dir, seeded_order
from ptlearn.errors import DataError

FOLDER = "nlu_evaluation_data"
FOLD = "KFold_1"
TASKNAME = "intent_and_slot"
REQUIRED_COLUMNS = ("scenario", "intent", "answer_annotation")
MAX_REPORTED = 10  # malformed rows listed by file:line in the summary; all are counted

_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_SLOT_TYPE = re.compile(r"\w+")
_NAME = re.compile(r"\w+")


class MalformedRow(ValueError):
    """A raw row that cannot become a record; the converter counts it and reports where."""


def parse_annotation(annotation: str) -> tuple[str, list[tuple[str, str]]]:
    """Splits an annotated answer into its plain utterance and its slots.

    Example: ``"wake me at [time : five am]"`` -> ``("wake me at five am", [("time", "five am")])``.
    Whitespace is collapsed to single spaces in the utterance and in slot values.

    Raises:
      MalformedRow: unbalanced or nested brackets, a slot without ':', an empty or non-word slot
        type, an empty value, a value with parentheses (the label format could not hold it), or
        an empty utterance.
    """
    slots = []
    for match in _BRACKETED.finditer(annotation):
        slot_type, colon, value = match.group(1).partition(":")
        slot_type, value = slot_type.strip(), " ".join(value.split())
        if not colon:
            raise MalformedRow(f"slot {match.group(0)!r} has no ':' between type and words")
        if not _SLOT_TYPE.fullmatch(slot_type):
            raise MalformedRow(f"slot {match.group(0)!r} has no word-like slot type")
        if not value:
            raise MalformedRow(f"slot {match.group(0)!r} has no words")
        if "(" in value or ")" in value:
            raise MalformedRow(f"slot {match.group(0)!r} holds parentheses")
        slots.append((slot_type, value))
    plain = _BRACKETED.sub(lambda m: m.group(1).partition(":")[2], annotation)
    if "[" in plain or "]" in plain:
        raise MalformedRow(f"unbalanced or nested brackets in {annotation!r}")
    utterance = " ".join(plain.split())
    if not utterance:
        raise MalformedRow("empty utterance")
    return utterance, slots


def format_label(intent: str, slots: list[tuple[str, str]]) -> str:
    """The answer text: ``"\\nIntent: alarm_set\\nSlots: time(five am), date(this week)"``,
    with ``Slots: None`` when there are none.
    """
    slot_text = ", ".join(f"{slot_type}({value})" for slot_type, value in slots) or "None"
    return f"\nIntent: {intent}\nSlots: {slot_text}"


def _row_to_record(row: dict[str, str | None]) -> dict:
    """Turns one CSV row (a DictReader dict) into a task record; raises MalformedRow."""
    if None in row or any(row.get(column) is None for column in REQUIRED_COLUMNS):
        raise MalformedRow("wrong number of ';'-separated fields")
    scenario, intent = row["scenario"].strip(), row["intent"].strip()
    if not _NAME.fullmatch(scenario) or not _NAME.fullmatch(intent):
        raise MalformedRow(f"scenario {scenario!r} / intent {intent!r} is empty or not a name")
    utterance, slots = parse_annotation(row["answer_annotation"])
    label = format_label(f"{scenario}_{intent}", slots)
    return {"taskname": TASKNAME, "utterance": utterance, "label": label}


def read_csv_folder(folder: pathlib.Path, malformed: list[str]) -> list[dict]:
    """Reads every ``*.csv`` in ``folder`` (sorted by name) into task records, in order.

    Rows that cannot be converted are appended to ``malformed`` as ``"file:line: reason"``.

    Raises:
      DataError: the folder has no CSV files, a file is not utf-8, or a header lacks a column.
    """
    paths = sorted(folder.glob("*.csv"))
    if not paths:
        raise DataError(f"{folder}: no *.csv files; is this the NLU Evaluation Data?")
    records = []
    for path in paths:
        try:
            with path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle, delimiter=";")
                missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(
                        f"{path}:1: header lacks column(s) {missing}; expected a ';'-separated "
                        f"header with {list(REQUIRED_COLUMNS)}"
                    )
                for row in reader:
                    try:
                        records.append(_row_to_record(row))
                    except MalformedRow as err:
                        malformed.append(f"{path}:{reader.line_num}: {err}")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not valid utf-8 ({err.reason})") from None
    return records


def convert(raw_dir: str | pathlib.Path, *, seed: int = DEFAULT_SEED) -> Conversion:
    """Converts fold 1: train from ``trainset``, val and test from the two halves of ``testset``.

    The halves are stratified by intent (records sorted by intent, then seeded order within it,
    alternating between val and test). Exact duplicate (utterance, label) records are kept once,
    the first seen winning, so a test row repeating a training row is dropped; utterances that
    carry different labels are dropped everywhere. Malformed rows are counted and listed.

    Args:
      raw_dir: the ``nlu_evaluation_data`` folder, its ``KFold_1`` folder or the folder above.

    Returns:
      Conversion: records ``{"taskname": "intent_and_slot", "utterance", "label"}``.
    """
    raw_dir = pathlib.Path(raw_dir)
    fold_dir = raw_dir if (raw_dir / "trainset").is_dir() else None
    if fold_dir is None:
        fold_dir = locate_raw_dir(raw_dir, FOLDER, FOLD) / FOLD
    malformed: list[str] = []
    sources = {
        "train": read_csv_folder(fold_dir / "trainset", malformed),
        "heldout": read_csv_folder(fold_dir / "testset" / "csv", malformed),
    }
    rows_read = sum(len(records) for records in sources.values()) + len(malformed)

    labels_of = collections.defaultdict(set)
    for records in sources.values():
        for record in records:
            labels_of[record["utterance"]].add(record["label"])
    conflicting = {utterance for utterance, labels in labels_of.items() if len(labels) > 1}

    seen: set[tuple[str, str]] = set()
    kept: dict[str, list[dict]] = {}
    duplicates = conflicts_dropped = 0
    for source, records in sources.items():
        kept[source] = []
        for record in records:
            key = (record["utterance"], record["label"])
            if record["utterance"] in conflicting:
                conflicts_dropped += 1
            elif key in seen:
                duplicates += 1
            else:
                seen.add(key)
                kept[source].append(record)

    def identity(record: dict) -> str:
        return f"{record['utterance']}\x00{record['label']}"

    heldout = seeded_order(kept["heldout"], [identity(r) for r in kept["heldout"]], seed)
    # A stable sort by intent keeps the seeded order inside each intent.
    heldout.sort(key=lambda record: record["label"].split("\n")[1])
    halves = {"val": heldout[0::2], "test": heldout[1::2]}
    splits = {"train": kept["train"], **halves}
    splits = {
        name: seeded_order(part, [identity(r) for r in part], seed) for name, part in splits.items()
    }
    stats = {
        "fold_dir": str(fold_dir),
        "rows_read": rows_read,
        "malformed_rows": len(malformed),
        "malformed_examples": malformed[:MAX_REPORTED],
        "duplicates_removed": duplicates,
        "conflicting_utterances": len(conflicting),
        "conflicting_rows_dropped": conflicts_dropped,
        "intents": len({r["label"].split("\n")[1] for part in splits.values() for r in part}),
    }
    return Conversion(splits=splits, stats=stats)
