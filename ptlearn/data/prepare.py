"""Converts a raw reference data set into train / val / test task jsonl files (SPEC.md section 2).

    python -m ptlearn.data.prepare financial_phrasebank --raw_dir=DIR --out_dir=DIR [--seed=1234]
    python -m ptlearn.data.prepare squad --raw_dir=DIR --out_dir=DIR
    python -m ptlearn.data.prepare assistant --raw_dir=DIR --out_dir=DIR

``--raw_dir`` may be the data set's own folder or the folder holding it (``../shared/data``, the
default). The last line printed is a JSON summary with the counts. Splits are deterministic: each
item's place comes from a hash of (seed, item key), so the same seed gives byte-identical files
whatever order the raw files are listed in.

This module also holds the split helpers the converters share.
"""

import dataclasses
import hashlib
import importlib
import pathlib
from collections.abc import Hashable, Sequence
from typing import Any, TypeVar

from ptlearn.data.jsonl import write_jsonl
from ptlearn.errors import DataError

T = TypeVar("T")

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SEED = 1234
# The shared data folder of a source checkout: <repo>/../shared/data.
DEFAULT_RAW_ROOT = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
# Converter modules of ptlearn.data, by the data set name given on the command line.
CONVERTERS = {
    "financial_phrasebank": "financial_phrasebank",
    "squad": "squad",
    "assistant": "assistant",
}
# Where each raw data set comes from, for a machine without ../shared/data (by folder name).
SOURCES = {
    "financial_phrasebank": (
        "Financial PhraseBank v1.0 (Malo et al. 2014, 'Good debt or bad debt'): the file "
        "Sentences_AllAgree.txt of FinancialPhraseBank-v1.0.zip (CC BY-NC-SA 3.0)"
    ),
    "squad": (
        "SQuAD v1.1 (Rajpurkar et al. 2016): the file dev-v1.1.json from "
        "https://rajpurkar.github.io/SQuAD-explorer/"
    ),
    "nlu_evaluation_data": (
        "the NLU Evaluation Data (Liu et al. 2019, github.com/xliuhw/NLU-Evaluation-Data): its "
        "cross-validation folder KFold_1 (trainset/*.csv and testset/csv/*.csv)"
    ),
}


@dataclasses.dataclass(frozen=True)
class Conversion:
    """A converted data set: the records of each split and the counts that describe the run.

    Attributes:
      splits: {"train" | "val" | "test": list of task records (dicts with ``taskname``)}.
      stats: JSON-serialisable counts (records read, duplicates, dropped rows, ...).
    """

    splits: dict[str, list[dict]]
    stats: dict[str, Any]


def stable_key(seed: int, key: str) -> bytes:
    """The sort key that places ``key`` in the seeded order: sha256 of (seed, key), 32 bytes."""
    return hashlib.sha256(f"{seed}\x00{key}".encode()).digest()


def seeded_order(items: Sequence[T], keys: Sequence[str], seed: int) -> list[T]:
    """Returns ``items`` in a pseudo-random order fixed by ``seed`` and each item's key.

    Args:
      items: any values; keys: one distinct string per item (its identity, e.g. the sentence).

    Returns:
      list: the items sorted by ``stable_key(seed, key)``; independent of the input order.
    """
    if len(items) != len(keys):
        raise ValueError(f"{len(items)} items but {len(keys)} keys")
    ranked = sorted(zip(keys, range(len(items)), strict=True), key=lambda p: stable_key(seed, p[0]))
    return [items[index] for _, index in ranked]


def split_sizes(
    count: int, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[int, int, int]:
    """Sizes (train, val, test) summing to ``count``; val and test get at least one item once
    there are three or more, so no split is empty on small inputs.
    """
    val = round(count * val_fraction)
    test = round(count * test_fraction)
    if count >= 3:
        val, test = max(val, 1), max(test, 1)
    return count - val - test, val, test


def split_by_fraction(items: Sequence[T], keys: Sequence[str], seed: int) -> dict[str, list[T]]:
    """Splits items 80/10/10 into train / val / test in the seeded order of their keys."""
    ordered = seeded_order(items, keys, seed)
    n_train, n_val, _ = split_sizes(len(ordered))
    return {
        "train": ordered[:n_train],
        "val": ordered[n_train : n_train + n_val],
        "test": ordered[n_train + n_val :],
    }


def stratified_split(
    items: Sequence[T], keys: Sequence[str], strata: Sequence[Hashable], seed: int
) -> dict[str, list[T]]:
    """Splits items 80/10/10 within each stratum (e.g. label), so every split keeps the label mix.

    Each split is then put in seeded order, so its strata are interleaved rather than in blocks.
    """
    groups: dict[Hashable, list[int]] = {}
    for index, stratum in enumerate(strata):
        groups.setdefault(stratum, []).append(index)
    chosen: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for stratum in sorted(groups, key=str):
        indices = groups[stratum]
        parts = split_by_fraction(indices, [keys[i] for i in indices], seed)
        for name in SPLIT_NAMES:
            chosen[name].extend(parts[name])
    return {
        name: seeded_order([items[i] for i in chosen[name]], [keys[i] for i in chosen[name]], seed)
        for name in SPLIT_NAMES
    }


def locate_raw_dir(raw_dir: str | pathlib.Path, folder: str, marker: str) -> pathlib.Path:
    """Finds a data set's folder: ``raw_dir`` itself or ``raw_dir/folder``, whichever holds
    ``marker`` (a file or sub-folder that the data set always has).

    Raises:
      DataError: neither holds ``marker``; the message says what was looked for.
    """
    raw_dir = pathlib.Path(raw_dir)
    for candidate in (raw_dir, raw_dir / folder):
        if (candidate / marker).exists():
            return candidate
    source = SOURCES.get(folder, f"the {folder} data set")
    if not raw_dir.is_dir():
        raise DataError(
            f"--raw_dir {raw_dir}: no such folder; this converter reads {source}: download it "
            "and give its folder as --raw_dir"
        )
    raise DataError(
        f"--raw_dir {raw_dir}: found neither {raw_dir / marker} nor {raw_dir / folder / marker}; "
        f"this converter reads {source}: download it and give its folder as --raw_dir"
    )


def prepare(
    dataset: str,
    raw_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    seed: int = DEFAULT_SEED,
    **options: Any,
) -> dict[str, Any]:
    """Converts one raw data set and writes ``out_dir/{train,val,test}.jsonl``.

    Args:
      dataset: a key of ``CONVERTERS``; options: converter-specific (e.g. ``agreement``).

    Returns:
      dict: the JSON-serialisable summary (data set, paths, seed, records per split, stats).
    """
    if dataset not in CONVERTERS:
        raise DataError(f"unknown data set {dataset!r}; choose one of {sorted(CONVERTERS)}")
    converter = importlib.import_module(f"ptlearn.data.{CONVERTERS[dataset]}")
    conversion = converter.convert(raw_dir, seed=seed, **options)
    out_dir = pathlib.Path(out_dir)
    counts = {
        name: write_jsonl(out_dir / f"{name}.jsonl", conversion.splits[name])
        for name in SPLIT_NAMES
    }
    return {
        "dataset": dataset,
        "raw_dir": str(raw_dir),
        "out_dir": str(out_dir),
        "seed": seed,
        "records": counts,
        **conversion.stats,
    }


AGREEMENTS = ("50", "66", "75", "all")


def main(argv: Sequence[str]) -> None:
    """`python -m ptlearn.data.prepare DATASET --raw_dir=D --out_dir=D`: writes the splits,
    a line per file, then the summary as one JSON line."""
    from absl import flags

    from ptlearn import cli

    if len(argv) != 2:
        cli.fail(f"give one data set before the --flags: {' | '.join(CONVERTERS)}")
    dataset, f = argv[1], flags.FLAGS
    options = {}
    if f["agreement"].present and dataset != "financial_phrasebank":
        cli.fail("--agreement is an option of financial_phrasebank only")
    if dataset == "financial_phrasebank":
        options["agreement"] = f.agreement
    summary = prepare(dataset, f.raw_dir, f.out_dir, seed=f.seed, **options)
    for name in SPLIT_NAMES:
        print(
            f"wrote {pathlib.Path(f.out_dir) / f'{name}.jsonl'}: {summary['records'][name]} records"
        )
    cli.print_json(summary)


if __name__ == "__main__":
    from absl import flags

    from ptlearn import cli

    flags.DEFINE_string(
        "raw_dir", str(DEFAULT_RAW_ROOT), "the data set's folder or the folder holding it"
    )
    flags.DEFINE_string("out_dir", None, "where {train,val,test}.jsonl go")
    flags.DEFINE_integer("seed", DEFAULT_SEED, "split seed")
    flags.DEFINE_enum(
        "agreement", "all", AGREEMENTS, "financial_phrasebank: minimum annotator agreement"
    )
    flags.mark_flag_as_required("out_dir")
    cli.run(main)
