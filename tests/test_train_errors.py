"""Bad input to training and prediction: one clear, located error (or a counted warning)."""

import logging
import subprocess
import sys

import pytest
from test_train import _write_config
from tiny_model import tiny_config, write_tiny_data, write_tiny_model

from ptlearn import config_lib, training
from ptlearn.errors import CheckpointError, ConfigError, DataError, TemplateError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_errors")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def test_malformed_jsonl_line_names_file_and_line(tiny, tmp_path):
    model, data = tiny
    bad = tmp_path / "bad.jsonl"
    lines = data["train"].read_text().splitlines()
    lines.insert(3, '{"taskname": "sentiment", "sentence": "cut off')
    bad.write_text("\n".join(lines) + "\n")
    config = tiny_config(model, data)
    config.model.data.train_ds = (str(bad),)
    with pytest.raises(DataError, match=rf"{bad.name}:4"):
        training.train_and_evaluate(config, str(tmp_path / "w"))


def test_unknown_taskname_names_line_and_known_tasks(tiny, tmp_path):
    model, data = tiny
    bad = tmp_path / "val.jsonl"
    bad.write_text(
        data["val"].read_text() + '{"taskname": "sentimnet", "sentence": "x", "label": "y"}\n'
    )
    config = tiny_config(model, data)
    config.model.data.validation_ds = (str(bad),)
    with pytest.raises(DataError, match=r"val.jsonl:13.*sentimnet.*sentiment"):
        training.train_and_evaluate(config, str(tmp_path / "w"))


def test_template_errors_name_the_task(tiny, tmp_path):
    config = tiny_config(*tiny)
    config.model.task_templates[0].virtual_token_splits = (3,)
    with pytest.raises(TemplateError, match="sentiment"):
        training.train_and_evaluate(config, str(tmp_path / "w"))
    config = tiny_config(*tiny)
    config.model.task_templates[0].prompt_template = "<|VIRTUAL_PROMPT_0|> {sentence} {mood}"
    config.model.task_templates[0].answer_field = "mood"
    with pytest.raises(DataError, match=r"train.jsonl:1.*'sentiment'.*mood"):
        training.train_and_evaluate(config, str(tmp_path / "w2"))


def test_missing_data_file_and_task_without_template(tiny, tmp_path):
    config = tiny_config(*tiny)
    config.model.data.train_ds = (str(tmp_path / "nope.jsonl"),)
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        training.train_and_evaluate(config, str(tmp_path / "w"))
    config = tiny_config(*tiny)
    config.model.new_tasks = ("squad",)
    with pytest.raises(ConfigError, match="'squad' has no entry in model.task_templates"):
        training.train_and_evaluate(config, str(tmp_path / "w"))


def test_over_long_examples_are_dropped_with_a_counted_warning(tiny, tmp_path, caplog):
    config = tiny_config(*tiny)
    config.model.max_seq_length = 19
    config.model.global_batch_size = config.model.micro_batch_size = 4
    with caplog.at_level(logging.WARNING):
        s = training.setup(config)
    assert 0 < len(s.train_examples) < 48
    assert any(
        "dropped" in r.getMessage() and "max_seq_length=19" in r.getMessage()
        for r in caplog.records
    )


def test_pipeline_parallelism_is_refused_clearly(tiny):
    config = tiny_config(*tiny)
    config.model.pipeline_model_parallel_size = 2
    with pytest.raises(ConfigError, match="not supported yet, use fsdp|not supported yet"):
        config_lib.validate(config)


def test_corrupt_checkpoint_is_reported(tiny, tmp_path):
    model, data = tiny
    config = tiny_config(model, data)
    config.trainer.max_steps = 2
    config.model.optim.sched.warmup_steps = 0
    training.train_and_evaluate(config, str(tmp_path))
    for f in (tmp_path / "checkpoints" / "last").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage")
    config.trainer.max_steps = 4  # a longer run on purpose: the changed config is allowed
    with pytest.raises(CheckpointError, match="cannot be restored.*delete it"):
        training.train_and_evaluate(config, str(tmp_path), allow_config_change=True)


def test_cli_prints_one_line_without_traceback(tiny, tmp_path):
    model, data = tiny
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "train.jsonl").write_text("not json\n")
    config_file = _write_config(tmp_path, model, {**data, "train": bad / "train.jsonl"})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptlearn.train",
            f"--config={config_file}",
            f"--workdir={tmp_path / 'w'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "train.jsonl:1" in last
