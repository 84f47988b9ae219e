"""Financial PhraseBank v1.0 (Malo et al. 2014) -> sentiment task records.

Raw format: ``Sentences_<agreement>Agree.txt``, latin-1, CRLF, one ``sentence@label`` a line.
"""

import collections
import pathlib

from ptlearn.data.prepare import DEFAULT_SEED, Conversion, locate_raw_dir, stratified_split
from ptlearn.errors import DataError

FOLDER = "financial_phrasebank"
TASKNAME = "sentiment"
LABELS = ("positive", "negative", "neutral")
AGREEMENT_FILES = {
    "50": "Sentences_50Agree.txt",
    "66": "Sentences_66Agree.txt",
    "75": "Sentences_75Agree.txt",
    "all": "Sentences_AllAgree.txt",
}


def read_phrasebank(path: str | pathlib.Path) -> list[tuple[int, str, str]]:
    """Reads a phrasebank file as (1-based line number, sentence, label) triples, in file order.

    The label follows the LAST '@' (sentences may contain '@'); blank lines are skipped.

    Raises:
      DataError: the file is missing, or a line has no '@', an empty sentence or an unknown label;
        the message names ``file:line``.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_bytes().decode("latin-1")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    rows = []
    # Split on "\n" only: latin-1 byte 0x85 decodes to a character str.splitlines breaks on.
    for line_number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        sentence, at, label = line.rpartition("@")
        sentence, label = sentence.strip(), label.strip()
        if not at:
            raise DataError(f"{path}:{line_number}: no '@' separating sentence and label")
        if not sentence:
            raise DataError(f"{path}:{line_number}: empty sentence before '@{label}'")
        if label not in LABELS:
            raise DataError(
                f"{path}:{line_number}: unknown label {label!r}; expected one of {list(LABELS)}"
            )
        rows.append((line_number, sentence, label))
    return rows


def convert(
    raw_dir: str | pathlib.Path, *, seed: int = DEFAULT_SEED, agreement: str = "all"
) -> Conversion:
    """Converts one agreement level into stratified 80/10/10 train / val / test sentiment records.

    Exact duplicate (sentence, label) lines are kept once; sentences that appear with different
    labels are dropped entirely, since neither label can be trusted. Both are counted.

    Args:
      raw_dir: the ``financial_phrasebank`` folder or the folder holding it.
      agreement: "50", "66", "75" or "all" (minimum share of annotators who agreed).

    Returns:
      Conversion: records ``{"taskname": "sentiment", "sentence": str, "label": str}``.
    """
    if agreement not in AGREEMENT_FILES:
        raise DataError(
            f"--agreement {agreement!r} is not one of {sorted(AGREEMENT_FILES)}; "
            "pick the minimum annotator agreement"
        )
    filename = AGREEMENT_FILES[agreement]
    path = locate_raw_dir(raw_dir, FOLDER, filename) / filename
    rows = read_phrasebank(path)

    unique_pairs = list(dict.fromkeys((sentence, label) for _, sentence, label in rows))
    labels_of = collections.defaultdict(set)
    for sentence, label in unique_pairs:
        labels_of[sentence].add(label)
    conflicting = {sentence for sentence, labels in labels_of.items() if len(labels) > 1}
    kept = [(sentence, label) for sentence, label in unique_pairs if sentence not in conflicting]

    records = [{"taskname": TASKNAME, "sentence": s, "label": y} for s, y in kept]
    splits = stratified_split(records, [s for s, _ in kept], [y for _, y in kept], seed)
    stats = {
        "agreement": agreement,
        "raw_file": str(path),
        "lines_read": len(rows),
        "duplicates_removed": len(rows) - len(unique_pairs),
        "conflicting_sentences": len(conflicting),
        "conflicting_lines_dropped": len(unique_pairs) - len(kept),
        "labels": {
            name: dict(sorted(collections.Counter(r["label"] for r in part).items()))
            for name, part in splits.items()
        },
    }
    return Conversion(splits=splits, stats=stats)
