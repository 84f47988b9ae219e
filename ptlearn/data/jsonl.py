"""Reading and writing task .jsonl files, with errors that name the file and line at fault.

A task file holds one JSON object a line; every object has a ``taskname`` (SPEC.md section 2).
"""

import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ptlearn.errors import DataError
from ptlearn.files import atomic_writer

PathLike = str | os.PathLike


def iter_jsonl(path: PathLike, *, required_keys: Sequence[str] = ()) -> Iterator[dict]:
    """Yields the records of a jsonl file; see ``iter_numbered_jsonl`` for the checks."""
    for _, record in iter_numbered_jsonl(path, required_keys=required_keys):
        yield record


def iter_numbered_jsonl(
    path: PathLike, *, required_keys: Sequence[str] = (), default_task: str | None = None
) -> Iterator[tuple[int, dict]]:
    """Yields the records of a jsonl file one at a time, checking each as it is read.

    Args:
      path: a utf-8 file with one JSON object a line; blank lines are skipped.
      required_keys: keys every record must have besides ``taskname``.
      default_task: the task of records without a ``taskname`` (None: they are an error).

    Yields:
      (line_number, record): one per non-blank line, in file order; line numbers are 1-based.

    Raises:
      DataError: the file is missing or unreadable, or a line is not valid utf-8 / JSON, is not
        an object, or lacks ``taskname`` or a required key; the message names ``file:line``.
    """
    path = pathlib.Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the path of the jsonl data set") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})") from None
    with handle:
        # Split on b"\n" only: str.splitlines would also break on U+2028 inside JSON strings.
        for line_number, raw_line in enumerate(handle, start=1):
            record = _parse_line(path, line_number, raw_line, required_keys, default_task)
            if record is not None:
                yield line_number, record


def read_jsonl(path: PathLike, *, required_keys: Sequence[str] = ()) -> list[dict]:
    """Reads a whole jsonl file into a list of records; see ``iter_jsonl`` for the checks.

    Returns:
      list[dict]: the records in file order (blank lines skipped).
    """
    return list(iter_jsonl(path, required_keys=required_keys))


def _parse_line(
    path: pathlib.Path,
    line_number: int,
    raw_line: bytes,
    required_keys: Sequence[str],
    default_task: str | None = None,
) -> dict | None:
    """Parses one raw line into a checked record, or None for a blank line."""
    where = f"{path}:{line_number}"
    try:
        text = raw_line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{where}: not valid utf-8 (byte {err.start + 1}); re-save the file as utf-8"
        ) from None
    if line_number == 1:
        # Editors on Windows often prepend a byte-order mark that json.loads rejects.
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return None
    try:
        record = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{where}: invalid JSON ({err.msg} at column {err.colno}); "
            "each line must hold one complete JSON object"
        ) from None
    except _Refused as err:
        raise DataError(f"{where}: {err}") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply; records are flat objects") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise DataError(f"{where}: a value cannot be read ({err})") from None
    try:
        _check_text(where, record)
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply; records are flat objects") from None
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: expected a JSON object, got {type(record).__name__}; "
            'each line must look like {"taskname": ..., <fields>}'
        )
    return checked_record(where, record, required_keys, default_task)


class _Refused(ValueError):
    """JSON that parses but is not data: repeated keys, NaN / Infinity."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({ascii(k) for k in keys if keys.count(k) > 1})
    if repeated:
        raise _Refused(f"key {', '.join(repeated)} appears twice in one object; keep one")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number; write the value as a string or a number")


def _check_text(where: str, value: Any) -> None:
    """Strings must be valid unicode (no lone surrogates from \\ud800 escapes)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"{where}: a string holds a lone surrogate escape (\\ud800-\\udfff); it is not text"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(where, key)
            _check_text(where, item)
    elif isinstance(value, list):
        for item in value:
            _check_text(where, item)


def checked_record(
    where: str, record: dict, required_keys: Sequence[str] = (), default_task: str | None = None
) -> dict:
    """A record (of any source) with a valid `taskname` and the required keys; a record without
    a taskname takes `default_task` when one is given. `where` (file:line) names it in errors."""
    if "taskname" not in record:
        if default_task is None:
            raise DataError(f"{where}: missing 'taskname'; every record must name its task")
        record = {"taskname": default_task, **record}
    taskname = record["taskname"]
    if not isinstance(taskname, str) or not taskname:
        raise DataError(f"{where}: 'taskname' must be a non-empty string, got {taskname!r}")
    for key in required_keys:
        if key not in record:
            raise DataError(
                f"{where}: record of task {taskname!r} lacks required key {key!r} "
                f"(it has {sorted(record)})"
            )
    return record


def write_jsonl(path: PathLike, records: Iterable[dict]) -> int:
    """Writes records as utf-8 jsonl, one object a line, atomically (temp file, then rename).

    Args:
      path: the destination; its parent folders are created. An existing file is replaced only
        once every record has been written, so a failure never leaves a half-written file.
      records: JSON-serialisable dicts, written in order with their key order kept.

    Returns:
      int: the number of records written.

    Raises:
      DataError: a record is not a dict or not JSON-serialisable, or the file cannot be written.
    """
    path = pathlib.Path(path)
    count = 0
    try:
        with atomic_writer(path) as handle:
            for count, record in enumerate(records, start=1):
                handle.write(_dump_record(path, count, record))
                handle.write("\n")
    except OSError as err:
        raise DataError(f"{path}: cannot be written ({err.strerror or err})") from None
    return count


def _dump_record(path: pathlib.Path, index: int, record: dict) -> str:
    """Serialises one record to a single line; ``index`` is 1-based, for the error message."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: record {index} is a {type(record).__name__}, not a dict")
    try:
        return json.dumps(record, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: record {index} is not JSON-serialisable ({err})") from None
