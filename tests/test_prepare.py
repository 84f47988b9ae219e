"""Converters of the reference data sets: formats, counts, deterministic and leak-free splits."""

import collections
import json
import pathlib
import re
import subprocess
import sys

import pytest

from ptlearn.data import assistant, financial_phrasebank, squad
from ptlearn.data.jsonl import read_jsonl
from ptlearn.data.prepare import (
    SPLIT_NAMES,
    prepare,
    seeded_order,
    split_sizes,
    stratified_split,
)
from ptlearn.errors import DataError
from ptlearn.metrics import intent_accuracy, slot_f1

LABEL_FORMAT = re.compile(r"\nIntent: \w+\nSlots: (None|\w+\([^()]+\)(, \w+\([^()]+\))*)")


def _read_splits(out_dir: pathlib.Path) -> dict[str, list[dict]]:
    return {name: read_jsonl(out_dir / f"{name}.jsonl") for name in SPLIT_NAMES}


def _split_bytes(out_dir: pathlib.Path) -> list[bytes]:
    return [(out_dir / f"{name}.jsonl").read_bytes() for name in SPLIT_NAMES]


# --- split helpers -------------------------------------------------------------------------


def test_seeded_order_ignores_input_order_and_depends_on_seed():
    keys = [f"item {i}" for i in range(50)]
    assert seeded_order(keys, keys, 1) == seeded_order(keys[::-1], keys[::-1], 1)
    assert seeded_order(keys, keys, 1) != seeded_order(keys, keys, 2)
    assert sorted(seeded_order(keys, keys, 1)) == sorted(keys)


@pytest.mark.parametrize(
    ("count", "sizes"), [(0, (0, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (42, (34, 4, 4))]
)
def test_split_sizes(count, sizes):
    assert split_sizes(count) == sizes


def test_stratified_split_keeps_each_label_share():
    labels = ["a"] * 100 + ["b"] * 30
    keys = [str(i) for i in range(len(labels))]
    splits = stratified_split(list(range(len(labels))), keys, labels, seed=0)
    counts = {name: collections.Counter(labels[i] for i in part) for name, part in splits.items()}
    assert counts["train"] == {"a": 80, "b": 24}
    assert counts["val"] == counts["test"] == {"a": 10, "b": 3}
    assert sorted(i for part in splits.values() for i in part) == list(range(len(labels)))


# --- Financial PhraseBank ------------------------------------------------------------------


def test_phrasebank_splits_on_last_at_and_reports_bad_lines(tmp_path):
    path = tmp_path / "Sentences_AllAgree.txt"
    path.write_bytes(b"Mail ir@company.fi for \xe5 news .@neutral\r\nProfit rose .@positive\r\n")
    rows = financial_phrasebank.read_phrasebank(path)
    assert rows == [
        (1, "Mail ir@company.fi for å news .", "neutral"),
        (2, "Profit rose .", "positive"),
    ]
    path.write_bytes(b"Profit rose .@positive\r\n\r\nProfit fell .@bad\r\n")
    with pytest.raises(DataError, match=rf"{path}:3: unknown label 'bad'"):
        financial_phrasebank.read_phrasebank(path)
    path.write_bytes(b"No separator here\r\n")
    with pytest.raises(DataError, match=rf"{path}:1: no '@'"):
        financial_phrasebank.read_phrasebank(path)


def test_phrasebank_50agree_counts_duplicates_and_conflicts(shared_dir, tmp_path):
    raw_dir = shared_dir / "data" / "financial_phrasebank"
    argv = ["financial_phrasebank", f"--raw_dir={raw_dir}", "--agreement=50"]
    proc = _cli(*argv, f"--out_dir={tmp_path / 'a'}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["duplicates_removed"] == 6
    assert summary["conflicting_sentences"] == 2
    assert summary["conflicting_lines_dropped"] == 4
    kept = summary["lines_read"] - 6 - 4
    assert sum(summary["records"].values()) == kept

    splits = _read_splits(tmp_path / "a")
    assert {name: len(part) for name, part in splits.items()} == summary["records"]
    sentences = [r["sentence"] for part in splits.values() for r in part]
    assert len(sentences) == len(set(sentences)) == kept  # no sentence twice, none in two splits
    assert (
        "The Group 's business is balanced by its broad portfolio of sports and presence in all major markets ."
        not in sentences
    )
    assert all(
        r["taskname"] == "sentiment" and set(r) == {"taskname", "sentence", "label"}
        for part in splits.values()
        for r in part
    )

    # Stratified: each label's share of every split is within one sentence of 80/10/10.
    totals = collections.Counter(r["label"] for part in splits.values() for r in part)
    for name, fraction in zip(SPLIT_NAMES, (0.8, 0.1, 0.1), strict=True):
        counts = collections.Counter(r["label"] for r in splits[name])
        for label, total in totals.items():
            assert abs(counts[label] - fraction * total) <= 1, (name, label)

    # Same seed: byte-identical; another seed: a different split.
    prepare("financial_phrasebank", raw_dir, tmp_path / "b", agreement="50")
    assert _split_bytes(tmp_path / "a") == _split_bytes(tmp_path / "b")
    prepare("financial_phrasebank", raw_dir, tmp_path / "c", seed=7, agreement="50")
    assert _split_bytes(tmp_path / "a") != _split_bytes(tmp_path / "c")


def test_phrasebank_default_agreement_reads_allagree(shared_dir, tmp_path):
    summary = prepare("financial_phrasebank", shared_dir / "data", tmp_path)
    assert summary["agreement"] == "all"
    assert summary["raw_file"].endswith("Sentences_AllAgree.txt")
    assert summary["conflicting_sentences"] == 0


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ptlearn.data.prepare", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_user_errors_are_one_line_without_traceback(tmp_path):
    for args, words in (
        (["financial_phrasebank", f"--raw_dir={tmp_path}"], "Sentences_AllAgree.txt"),
        # Without the data, the line says where it comes from.
        (["financial_phrasebank", f"--raw_dir={tmp_path}"], "Malo et al. 2014"),
        (["squad", f"--raw_dir={tmp_path / 'none'}"], "no such folder; this converter reads SQuAD"),
        (["assistant", f"--raw_dir={tmp_path}"], "github.com/xliuhw/NLU-Evaluation-Data"),
        (["financial_phrasebank", "--agreement=90"], "--agreement"),
        (["squad", "--agreement=50"], "--agreement"),
        (["imdb"], "imdb"),
    ):
        proc = _cli(*args, f"--out_dir={tmp_path}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("error:") and words in line, line
    assert list(tmp_path.iterdir()) == []


# --- SQuAD ---------------------------------------------------------------------------------


def _squad_file(tmp_path: pathlib.Path) -> pathlib.Path:
    def article(title, questions):
        return {
            "title": title,
            "paragraphs": [
                {
                    "context": f"Context of {title}.",
                    "qas": [
                        {
                            "id": f"{title}{i}",
                            "question": q,
                            "answers": [{"text": a} for a in answers],
                        }
                        for i, (q, answers) in enumerate(questions)
                    ],
                }
            ],
        }

    document = {
        "version": "1.1",
        "data": [
            article("A", [("Who?", ["x", "x", "y"]), ("Who?", ["z", "x"]), ("Why?", [])]),
            article("B", [("What?", ["b"])]),
            article("C", [("When?", ["c"])]),
        ],
    }
    path = tmp_path / "squad" / "dev-v1.1.json"
    path.parent.mkdir()
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_squad_merges_duplicates_and_skips_unanswerable(tmp_path):
    _squad_file(tmp_path)
    conversion = squad.convert(tmp_path, seed=0)
    assert conversion.stats["duplicates_merged"] == 1
    assert conversion.stats["unanswerable_skipped"] == 1
    assert conversion.stats["articles"] == {"train": 1, "val": 1, "test": 1}
    records = {r["question"]: r for part in conversion.splits.values() for r in part}
    assert records["Who?"] == {
        "taskname": "squad",
        "context": "Context of A.",
        "question": "Who?",
        "answer": "x",
        "answers": ["x", "x", "y", "z"],
    }
    assert set(records) == {"Who?", "What?", "When?"}


def test_squad_layout_errors_name_the_place(tmp_path):
    path = _squad_file(tmp_path)
    document = json.loads(path.read_text())
    del document["data"][1]["paragraphs"][0]["qas"][0]["question"]
    path.write_text(json.dumps(document))
    with pytest.raises(
        DataError, match=r"data\[1\] \('B'\) paragraphs\[0\] question 'B0': missing 'question'"
    ):
        squad.convert(tmp_path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=rf"{path}:1: invalid JSON"):
        squad.convert(path.parent)


def test_squad_real_split_is_by_article(shared_dir, tmp_path):
    summary = prepare("squad", shared_dir / "data" / "squad", tmp_path)
    assert sum(summary["articles"].values()) == 42
    assert summary["articles"] == {"train": 34, "val": 4, "test": 4}
    total = summary["questions_read"] - summary["duplicates_merged"]
    total -= summary["unanswerable_skipped"]
    assert sum(summary["records"].values()) == total
    splits = _read_splits(tmp_path)
    contexts = {name: {r["context"] for r in part} for name, part in splits.items()}
    assert not contexts["train"] & contexts["val"]
    assert not contexts["train"] & contexts["test"]
    assert not contexts["val"] & contexts["test"]
    for part in splits.values():
        for record in part:
            assert record["answer"] == record["answers"][0]
            assert all(answer in record["context"] for answer in record["answers"])


# --- NLU Evaluation Data (assistant) ----------------------------------------------------------

HEADER = "answerid;scenario;intent;answer_annotation;answer_from_anno;answer_from_user\n"


def _assistant_fold(tmp_path: pathlib.Path) -> pathlib.Path:
    fold = tmp_path / "nlu_evaluation_data" / "KFold_1"
    (fold / "trainset").mkdir(parents=True)
    (fold / "testset" / "csv").mkdir(parents=True)
    (fold / "trainset" / "alarm_set.csv").write_text(
        HEADER
        + '1;alarm;set;"wake me up at [time : five am] [date : this week]";"x";"x"\n'
        + '2;alarm;set;"set an alarm";"x";"x"\n'
        + '3;alarm;set;"set an alarm";"x";"x"\n'  # exact duplicate
        + '4;alarm;set;"wake me [time : six";"x";"x"\n'  # unbalanced bracket
        + "5;alarm;set\n",  # too few fields
        encoding="utf-8",
    )
    (fold / "trainset" / "iot_hue_lightoff.csv").write_text(
        HEADER
        + '6;iot;hue_lightoff;"lights off in the [house_place : kitchen], please";"x";"x"\n'
        + '7;iot;hue_lightoff;"stop";"x";"x"\n',  # conflicts with row 9
        encoding="utf-8",
    )
    (fold / "testset" / "csv" / "general_quirky.csv").write_text(
        HEADER
        + '8;general;quirky;"tell me about [person : ada]";"x";"x"\n'
        + '9;general;quirky;"stop";"x";"x"\n'
        + '10;alarm;set;"set an alarm";"x";"x"\n'
        + '11;general;quirky;"what is [time : ]";"x";"x"\n',  # empty slot value
        encoding="utf-8",
    )
    return fold


def test_parse_annotation_and_label_format():
    utterance, slots = assistant.parse_annotation(
        "wake me up at [time : five  am] [date : this week]"
    )
    assert utterance == "wake me up at five am this week"
    assert slots == [("time", "five am"), ("date", "this week")]
    assert assistant.format_label("alarm_set", slots) == (
        "\nIntent: alarm_set\nSlots: time(five am), date(this week)"
    )
    assert assistant.format_label("alarm_query", []) == "\nIntent: alarm_query\nSlots: None"
    assert assistant.parse_annotation("send to [person : bob], now") == (
        "send to bob, now",
        [("person", "bob")],
    )
    for bad in ["a [time six]", "a [ : six]", "a [time : ]", "a ]b[", "a [t : (x)]", "[x : ]"]:
        with pytest.raises(assistant.MalformedRow):
            assistant.parse_annotation(bad)


def test_assistant_fixture_counts_and_labels(tmp_path):
    _assistant_fold(tmp_path)
    conversion = assistant.convert(tmp_path / "nlu_evaluation_data", seed=3)
    stats = conversion.stats
    assert stats["rows_read"] == 11
    assert stats["malformed_rows"] == 3
    assert [m.split(": ")[0].rsplit("/", 1)[1] for m in stats["malformed_examples"]] == [
        "alarm_set.csv:5",
        "alarm_set.csv:6",
        "general_quirky.csv:5",
    ]
    assert stats["duplicates_removed"] == 2  # row 3 in train, row 10 in test repeating row 2
    assert stats["conflicting_utterances"] == 1
    assert stats["conflicting_rows_dropped"] == 2
    train = {r["utterance"]: r["label"] for r in conversion.splits["train"]}
    assert train == {
        "wake me up at five am this week": "\nIntent: alarm_set\nSlots: time(five am), date(this week)",
        "set an alarm": "\nIntent: alarm_set\nSlots: None",
        "lights off in the kitchen, please": "\nIntent: iot_hue_lightoff\nSlots: house_place(kitchen)",
    }
    # Of the 4 held-out rows one survives; the first of each intent goes to val.
    assert [r["utterance"] for r in conversion.splits["val"]] == ["tell me about ada"]
    assert conversion.splits["test"] == []
    assert all(
        r["taskname"] == "intent_and_slot" for part in conversion.splits.values() for r in part
    )


def test_assistant_missing_column_is_a_data_error(tmp_path):
    fold = _assistant_fold(tmp_path)
    (fold / "trainset" / "bad.csv").write_text("answerid,scenario,intent\n1,a,b\n")
    with pytest.raises(DataError, match=r"bad.csv:1: header lacks column"):
        assistant.convert(fold)


def test_assistant_real_data(shared_dir, tmp_path):
    raw_dir = shared_dir / "data" / "nlu_evaluation_data"
    summary = prepare("assistant", raw_dir, tmp_path / "a")
    assert summary["malformed_rows"] == 0
    kept = summary["rows_read"] - summary["duplicates_removed"]
    assert sum(summary["records"].values()) == kept - summary["conflicting_rows_dropped"]
    assert abs(summary["records"]["val"] - summary["records"]["test"]) <= 1
    splits = _read_splits(tmp_path / "a")
    for part in splits.values():
        for record in part:
            assert LABEL_FORMAT.fullmatch(record["label"]), record
            assert "[" not in record["utterance"] and "]" not in record["utterance"]
    seen = [(r["utterance"], r["label"]) for part in splits.values() for r in part]
    assert len(seen) == len(set(seen))
    # The gold labels parse back to themselves: perfect scores under the task metrics.
    labels = [r["label"] for r in splits["val"]]
    assert intent_accuracy(labels, labels) == 1.0 and slot_f1(labels, labels) == 1.0
    prepare("assistant", raw_dir, tmp_path / "b")
    assert _split_bytes(tmp_path / "a") == _split_bytes(tmp_path / "b")
