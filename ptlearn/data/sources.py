"""Where examples come from: one spec string per data set, wherever a data set is named
(`model.data.train_ds` / `validation_ds` / `test_ds`, predict's `--data`).

  PATH (.jsonl or any other suffix)   one JSON object a line (jsonl.py)
  PATH.csv / PATH.tsv                 a header row, then one example a row (comma / tab)
  tfds:NAME[/CONFIG][:SPLIT]          a TensorFlow Datasets data set (the `tfds` extra), read
                                      with `tfds.data_source`: random access, no TensorFlow;
                                      class labels become their names; SPLIT defaults to train
  mem:NAME                            records handed over in Python (`in_memory`)
  TASK=SPEC                           SPEC's records belong to task TASK

A record without a `taskname` takes the task of `TASK=`, or the only task when there is one.
A template's `fields` ({template field: source column}) names the columns its task reads, so a
CSV or TFDS data set is used as it is. Every row goes through the checks jsonl lines go
through, and errors name the source and the row (`data.csv:7`, `tfds:imdb_reviews:train row 3`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ptlearn.data import jsonl
from ptlearn.errors import DataError

TFDS = "tfds:"
MEMORY = "mem:"
_registry: dict[str, list[dict]] = {}


def in_memory(records: Sequence[Mapping[str, Any]], name: str | None = None) -> str:
    """Registers `records` (dicts) for this process and returns their spec `mem:NAME` (NAME
    defaults to a digest of their content), to put in `model.data.*_ds` or give to predict.

    Arms of a sweep run in their own processes and cannot see them; give them files.
    """
    plain = []
    for index, record in enumerate(records, 1):
        if not isinstance(record, Mapping):
            raise DataError(f"in-memory record {index} is a {type(record).__name__}, not a dict")
        plain.append(dict(record))
    if name is None:
        name = _digest(plain)[:16]
    _registry[name] = plain
    return f"{MEMORY}{name}"


def _digest(records: Sequence[Mapping[str, Any]]) -> str:
    text = json.dumps(records, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def split_task(spec: str, tasks: Sequence[str]) -> tuple[str | None, str]:
    """`TASK=SPEC` -> (TASK, SPEC) when TASK is one of `tasks`; else (None, spec)."""
    head, sep, rest = spec.partition("=")
    if sep and rest and head in tasks:
        return head, rest
    return None, spec


def fingerprint(spec: str, tasks: Sequence[str]) -> str | None:
    """What identifies a data set's content for the run record: a file's SHA-256, in-memory
    records' digest, a TFDS name; None for a file that does not exist (reported when read).
    tasks: the names a `TASK=` prefix may take."""
    _, spec = split_task(spec, tasks)
    if spec.startswith(MEMORY):
        records = _registry.get(spec.removeprefix(MEMORY))
        return None if records is None else _digest(records)
    if spec.startswith(TFDS):
        return spec
    if pathlib.Path(spec).is_file():
        from ptlearn.checkpoints import file_checksum

        return file_checksum(spec)
    return None


def read(
    spec: str,
    *,
    tasks: Sequence[str],
    fields: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[tuple[int, dict]]:
    """Yields (row number, checked record) of the data set `spec` (1-based rows; a jsonl or
    CSV row number is its line).

    tasks: the tasks the run knows (a record without a taskname takes `TASK=`'s, or the only
    one). fields: {task: {template field: source column}} from the templates.
    """
    task, source = split_task(spec, tasks)
    default = task if task is not None else (tasks[0] if len(tasks) == 1 else None)
    if source.startswith(MEMORY):
        rows = _memory_rows(source)
    elif source.startswith(TFDS):
        rows = _tfds_rows(source)
    elif source.lower().endswith((".csv", ".tsv")):
        rows = _csv_rows(source)
    else:
        rows = jsonl.iter_numbered_jsonl(source, default_task=default)
    for row, record in rows:
        where = f"{source}:{row}" if not source.startswith(TFDS) else f"{source} row {row}"
        if "taskname" not in record and default is None:
            raise DataError(
                f"{where}: no 'taskname', and the run has tasks {list(tasks)}; name this data "
                f"set's task as TASK={source}"
            )
        record = jsonl.checked_record(where, record, default_task=default)
        yield row, _mapped(record, (fields or {}).get(record["taskname"]), where)


def _mapped(record: dict, mapping: Mapping[str, str] | None, where: str) -> dict:
    """The record with each template field read from its source column."""
    if not mapping:
        return record
    missing = [column for column in mapping.values() if column not in record]
    if missing:
        raise DataError(
            f"{where}: no column {', '.join(map(repr, missing))} (task {record['taskname']!r} "
            f"reads fields {dict(mapping)}; the row has {sorted(record)})"
        )
    return {**record, **{field: record[column] for field, column in mapping.items()}}


def _memory_rows(spec: str) -> Iterator[tuple[int, dict]]:
    name = spec.removeprefix(MEMORY)
    if name not in _registry:
        raise DataError(
            f"{spec}: no in-memory records of that name in this process; register them with "
            "ptlearn.in_memory(records) and use the spec it returns"
        )
    yield from enumerate((dict(r) for r in _registry[name]), 1)


def _csv_rows(path: str) -> Iterator[tuple[int, dict]]:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the path of the data set") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})") from None
    with handle:
        reader = csv.DictReader(handle, delimiter=delimiter, strict=True)
        try:
            header = reader.fieldnames
            if not header:
                raise DataError(f"{path}: empty; a CSV data set starts with a header row")
            if len(set(header)) != len(header) or not all(header):
                raise DataError(f"{path}:1: the header has empty or repeated column names")
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise DataError(
                        f"{path}:{line}: {len(header) + len(row[None])} values for the "
                        f"{len(header)} columns of the header"
                    )
                if any(value is None for value in row.values()):
                    raise DataError(f"{path}:{line}: fewer values than the header's columns")
                yield line, dict(row)
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not valid utf-8 (byte {err.start + 1})") from None


def parse_tfds(spec: str) -> tuple[str, str]:
    """`tfds:NAME[/CONFIG][:SPLIT]` -> (NAME[/CONFIG], SPLIT), SPLIT defaulting to train."""
    body = spec.removeprefix(TFDS)
    name, _, split = body.partition(":")
    if not name:
        raise DataError(f"{spec}: give the data set, e.g. tfds:imdb_reviews:train")
    return name, split or "train"


def _tfds_rows(spec: str) -> Iterator[tuple[int, dict]]:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            f"{spec}: tensorflow-datasets is not installed; pip install -e '.[tfds]'"
        ) from None
    name, split = parse_tfds(spec)
    try:
        source = tfds.data_source(name, split=split)
    except Exception as err:  # noqa: BLE001 - tfds raises many kinds; say which data set
        raise DataError(f"{spec}: cannot open it with tfds.data_source: {err}") from None
    features = source.dataset_info.features
    for index in range(len(source)):
        yield index + 1, _plain_row(source[index], features)


def _plain_row(row: Mapping[str, Any], features: Any) -> dict:
    """A TFDS example as JSON-like values: text decoded, class labels as their names."""
    out = {}
    for key, value in row.items():
        feature = features[key] if key in features else None  # noqa: SIM401 (FeaturesDict)
        names = getattr(feature, "names", None)
        if (
            names is not None
            and np.ndim(value) == 0
            and np.issubdtype(np.asarray(value).dtype, np.integer)
        ):
            out[key] = names[int(value)]
        else:
            out[key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value.item())
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
