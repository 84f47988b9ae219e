"""Data sources beside jsonl: CSV / TSV files, in-memory records and TFDS data sets, each with
a template's field mapping, the jsonl checks and errors that name the source and row."""

import csv
import json
import subprocess
import sys

import pytest

import ptlearn
from ptlearn.data import sources, toy
from ptlearn.errors import DataError, PtlearnError

FIELDS = {"sentence": "text", "label": "sentiment"}


def _csv(path, records, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["text", "sentiment", "source"])
        for r in records:
            writer.writerow([r["sentence"], r["label"], "toy"])
    return path


def _config(train, validation, test=(), **extra):
    config = ptlearn.load_config(
        "sentiment_prompt_tuning",
        "model=tiny,virtual=4,steps=2,init=vocab",
        **{
            "model.optim.sched.warmup_steps": 1,
            "trainer.val_check_interval": 2,
            "model.data.validation_metric_examples": 4,
            "inference.tokens_to_generate": 3,
            "model.data.train_ds": tuple(train),
            "model.data.validation_ds": tuple(validation),
            "model.data.test_ds": tuple(test),
            **extra,
        },
    )
    return config


def _with_fields(config):
    with config.unlocked():
        config.model.task_templates[0].fields = dict(FIELDS)
    return config


def test_csv_and_tsv_with_a_field_mapping_train_and_predict(tmp_path):
    splits = toy.splits()
    train = _csv(tmp_path / "train.csv", splits["train"])
    val = _csv(tmp_path / "val.tsv", splits["val"], delimiter="\t")
    config = _with_fields(_config([str(train)], [str(val)], [str(val)]))
    run = ptlearn.train(config, tmp_path / "w")
    assert run.final_step == 2 and run.test["test_sentiment/n"] == len(splits["val"])
    record = json.loads((tmp_path / "w" / "run_record.json").read_text())
    assert set(record["data"]) == {str(train), str(val)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptlearn.predict",
            f"--prompt_model={run.prompt_model}",
            f"--data={val}",
            f"--pred_file={tmp_path / 'pred.txt'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((tmp_path / "pred.txt").read_text().splitlines()) == len(splits["val"])


def test_in_memory_specs_are_named_and_fingerprinted():
    splits = toy.splits()
    train = ptlearn.in_memory(splits["train"])
    val = ptlearn.in_memory(splits["val"], name="toy-val")
    assert train.startswith("mem:") and val == "mem:toy-val"
    assert sources.fingerprint(train, ["sentiment"]) == sources.fingerprint(
        ptlearn.in_memory(list(splits["train"])), ["sentiment"]
    )


def test_in_memory_run(tmp_path):
    splits = toy.splits()
    train = ptlearn.in_memory(
        [{k: v for k, v in r.items() if k != "taskname"} for r in splits["train"]]
    )
    val = ptlearn.in_memory(splits["val"])
    run = ptlearn.train(_config([train], [val], [val]), tmp_path)
    assert run.final_step == 2 and run.test["test_sentiment/n"] == len(splits["val"])
    lm = ptlearn.load(run.prompt_model)
    assert len(lm.predict(splits["test"][:3])) == 3


def test_rows_keep_the_jsonl_checks_and_name_their_source(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,sentiment\nfine,positive\ntoo,many,values\n")
    with pytest.raises(DataError, match=r"bad.csv:3: 3 values for the 2 columns"):
        list(sources.read(str(bad), tasks=["sentiment"]))
    bad.write_text("text,sentiment\nshort\n")
    with pytest.raises(DataError, match=r"bad.csv:2: fewer values"):
        list(sources.read(str(bad), tasks=["sentiment"]))
    bad.write_text("text,text\na,b\n")
    with pytest.raises(DataError, match=r"bad.csv:1: the header has empty or repeated"):
        list(sources.read(str(bad), tasks=["sentiment"]))
    bad.write_text("text,label\nrose,positive\n")
    with pytest.raises(DataError, match=r"no 'taskname', and the run has tasks"):
        list(sources.read(str(bad), tasks=["sentiment", "squad"]))
    rows = list(sources.read(f"squad={bad}", tasks=["sentiment", "squad"]))
    assert rows == [(2, {"taskname": "squad", "text": "rose", "label": "positive"})]
    with pytest.raises(DataError, match=r"bad.csv:2: no column 'sentiment'"):
        list(sources.read(str(bad), tasks=["sentiment"], fields={"sentiment": FIELDS}))
    with pytest.raises(DataError, match="no in-memory records of that name"):
        list(sources.read("mem:nothing", tasks=["sentiment"]))
    with pytest.raises(DataError, match="in-memory record 2 is a str"):
        ptlearn.in_memory([{"taskname": "sentiment"}, "oops"])
    with pytest.raises(DataError, match=r"mem:\w+:1: 'taskname' must be a non-empty string"):
        list(sources.read(ptlearn.in_memory([{"taskname": 3}]), tasks=["a", "b"]))
    with pytest.raises(DataError, match="nope.csv: no such file"):
        list(sources.read(str(tmp_path / "nope.csv"), tasks=["sentiment"]))


def test_a_mapping_to_a_field_the_template_lacks_is_refused(tmp_path):
    config = _config(["x.jsonl"], ["x.jsonl"])
    with config.unlocked():
        config.model.task_templates[0].fields = {"headline": "text"}
    with pytest.raises(PtlearnError, match=r"fields maps \['headline'\], which the template"):
        ptlearn.train(config, tmp_path)


def test_a_tfds_data_set_trains_and_predicts(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")
    mock = tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE)
    with mock:
        rows = list(sources.read("tfds:imdb_reviews:test", tasks=["sentiment"]))
        assert len(rows) == 12 and {r["label"] for _, r in rows} <= {"neg", "pos"}
        assert all(r["taskname"] == "sentiment" and isinstance(r["text"], str) for _, r in rows)
        config = _config(
            ["tfds:imdb_reviews"], ["tfds:imdb_reviews:test"], ["tfds:imdb_reviews:test"]
        )
        with config.unlocked():
            config.model.task_templates[0].fields = {"sentence": "text", "label": "label"}
        run = ptlearn.train(config, tmp_path)
        assert run.final_step == 2 and run.test["test_sentiment/n"] == 12
        record = json.loads((tmp_path / "run_record.json").read_text())
        assert record["data"]["tfds:imdb_reviews"] == "tfds:imdb_reviews"
        lm = ptlearn.load(run.prompt_model)
        assert lm.label_sets["sentiment"] == ["neg", "pos"]
        answers = lm.rank([{"taskname": "sentiment", "sentence": r["text"]} for _, r in rows[:4]])
        assert set(answers) <= {"neg", "pos"}
    with pytest.raises(DataError, match="tfds:no_such_set: cannot open it with tfds.data_source"):
        list(sources.read("tfds:no_such_set", tasks=["sentiment"]))
