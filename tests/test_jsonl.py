"""jsonl reading and writing: round trips, located errors, atomic writes."""

import pathlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptlearn.data.jsonl import iter_jsonl, read_jsonl, write_jsonl
from ptlearn.errors import DataError


def _write(tmp_path: pathlib.Path, content: bytes, name: str = "data.jsonl") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_round_trip_keeps_order_unicode_and_one_object_a_line(tmp_path):
    records = [
        {"taskname": "sentiment", "sentence": "Profit rose 5 % in Åland \u2028 é", "label": "pos"},
        {"taskname": "squad", "context": "c", "question": "q?", "answers": ["a", "b"]},
    ]
    path = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl(path, records) == 2
    raw = path.read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n")
    assert "Åland".encode() in raw  # ensure_ascii=False: utf-8, not \u escapes
    back = read_jsonl(path)
    assert back == records
    assert list(back[0]) == ["taskname", "sentence", "label"]


def test_blank_and_crlf_lines_are_skipped_and_line_numbers_stay_physical(tmp_path):
    path = _write(
        tmp_path,
        b'\xef\xbb\xbf{"taskname": "t", "x": 1}\r\n\r\n   \n{"taskname": "t", "x": 2}\n\n{"x": 3}\n',
    )
    with pytest.raises(DataError, match=rf"^{path}:6: missing 'taskname'"):
        read_jsonl(path)
    records = iter_jsonl(path)
    assert next(records) == {"taskname": "t", "x": 1}
    assert next(records) == {"taskname": "t", "x": 2}  # streaming: the bad line is not read yet


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        (b'{"taskname": "t", "sentence": "s"}\n{"taskname": "t",\n', 2, "invalid JSON"),
        (
            b'{"taskname": "t", "sentence": ""}\n\n["taskname", "t"]\n',
            3,
            "expected a JSON object, got list",
        ),
        (b'"just a string"\n', 1, "expected a JSON object, got str"),
        (b'{"sentence": "s", "label": "l"}\n', 1, "missing 'taskname'"),
        (b'{"taskname": 3}\n', 1, "'taskname' must be a non-empty string"),
        (b'{"taskname": "t", "sentence": "s"}\n{"taskname": "t"}\n', 2, "lacks required key"),
        (b'{"taskname": "t", "sentence": "\xff"}\n', 1, "not valid utf-8"),
        # JSON that parses but is not data.
        (b'{"taskname": "t", "sentence": "a", "sentence": "b"}\n', 1, "'sentence' appears twice"),
        (b'{"taskname": "t", "sentence": NaN}\n', 1, "NaN is not a JSON number"),
        (b'{"taskname": "t", "sentence": -Infinity}\n', 1, "-Infinity is not a JSON number"),
        (b'{"taskname": "t", "sentence": 1' + b"9" * 5000 + b"}\n", 1, "cannot be read"),
        (
            b'{"taskname": "t", "sentence": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
            1,
            "nested too deeply",
        ),
        (b'{"taskname": "t", "sentence": "\\ud800 lone"}\n', 1, "lone surrogate"),
    ],
)
def test_each_error_names_file_and_line(tmp_path, content, line, what):
    path = _write(tmp_path, content)
    with pytest.raises(DataError) as excinfo:
        read_jsonl(path, required_keys=("sentence",))
    message = str(excinfo.value)
    assert message.startswith(f"{path}:{line}: ")
    assert what in message


def test_missing_required_key_names_task_and_key(tmp_path):
    path = _write(tmp_path, b'{"taskname": "squad", "context": "c"}\n')
    with pytest.raises(DataError, match=r"task 'squad' lacks required key 'question'"):
        read_jsonl(path, required_keys=("context", "question"))


def test_missing_file_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=rf"^{path}: no such file"):
        read_jsonl(path)
    with pytest.raises(DataError, match=str(tmp_path)):
        read_jsonl(tmp_path)  # a folder, not a file


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"taskname": "t", "x": 1}])
    before = path.read_bytes()

    def records():
        yield {"taskname": "t", "x": 2}
        yield {"taskname": "t", "x": object()}

    with pytest.raises(DataError, match=r"record 2 is not JSON-serialisable"):
        write_jsonl(path, records())
    with pytest.raises(DataError, match=r"record 1 is a list, not a dict"):
        write_jsonl(path, [["taskname", "t"]])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_write_is_deterministic(tmp_path):
    records = [{"taskname": "t", "n": i, "s": "ü"} for i in range(5)]
    write_jsonl(tmp_path / "a.jsonl", records)
    write_jsonl(tmp_path / "b.jsonl", iter(records))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


# --- properties -------------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_value = st.recursive(
    json_leaf | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
records_strategy = st.lists(
    st.fixed_dictionaries(
        {"taskname": st.text(min_size=1, max_size=10).filter(str.strip)},
        optional={"sentence": st.text(max_size=30), "extra": json_value},
    ),
    max_size=5,
)


@settings(max_examples=100, deadline=None)
@given(records=records_strategy)
def test_any_records_written_read_back_equal(records, tmp_path_factory):
    path = tmp_path_factory.mktemp("prop") / "r.jsonl"
    write_jsonl(path, records)
    assert read_jsonl(path) == records


@settings(max_examples=200, deadline=None)
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_read_as_records_or_one_located_data_error(content, tmp_path_factory):
    path = _write(tmp_path_factory.mktemp("prop"), content)
    try:
        records = read_jsonl(path)
    except DataError as err:
        assert re.match(rf"^{re.escape(str(path))}:\d+: ", str(err)), str(err)
    else:
        assert all(isinstance(r, dict) and r["taskname"] for r in records)
