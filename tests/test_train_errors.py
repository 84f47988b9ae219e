"""Bad input to training and prediction: one clear, located error (or a counted warning)."""

import logging
import os
import subprocess
import sys

import pytest
from test_train import _write_config
from tiny_model import tiny_config, write_tiny_data, write_tiny_model

from ptlearn import config_checks, training
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
    with pytest.raises(DataError, match=r"val.jsonl:13.*sentimnet.*did you mean 'sentiment'"):
        training.train_and_evaluate(config, str(tmp_path / "w"))
    # Names come out with ascii(): a look-alike letter in the data stays visible.
    bad.write_text('{"taskname": "sentim\u0435nt", "sentence": "x", "label": "y"}\n')
    with pytest.raises(DataError, match=r"'sentim\\u0435nt'"):
        training.train_and_evaluate(config, str(tmp_path / "w2"))


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
        config_checks.validate(config)


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


@pytest.mark.parametrize(
    "key, value",
    [
        ("model.optim.lr", float("nan")),
        ("model.optim.lr", float("inf")),
        ("model.optim.sched.min_lr", float("nan")),
        ("trainer.gradient_clip_val", float("nan")),
        ("inference.temperature", float("inf")),
        ("inference.top_p", float("nan")),
        ("model.optim.betas", (0.9, float("nan"))),
    ],
)
def test_non_finite_numbers_are_config_errors(tiny, key, value):
    config = tiny_config(*tiny)
    config.update_from_flattened_dict({key: value})
    with pytest.raises(ConfigError, match=r"give a finite number"):
        config_checks.validate(config)


def test_a_diverging_run_stops_and_writes_nothing_non_finite(tiny, tmp_path, monkeypatch):
    import jax.numpy as jnp
    import numpy as np

    from ptlearn.checkpoints.prompt_model import PromptModel, save_prompt_model
    from ptlearn.errors import TrainingError

    config = tiny_config(*tiny)
    config.model.optim.lr = 1e10
    with pytest.raises(ConfigError, match=r"model.optim.lr=10000000000.0: Adam moves"):
        config_checks.validate(config)
    config = tiny_config(*tiny)
    config.trainer.log_every_n_steps = 4  # the NaN of step 3 surfaces at the next fetch
    real = training.make_train_step

    def nan_from_step_3(s, tx):
        step, calls = real(s, tx), []

        def run(state, frozen, batch):  # the state is donated: count calls, not its step
            calls.append(1)
            new_state, stats = step(state, frozen, batch)
            if len(calls) >= 3:
                stats = {**stats, "loss": jnp.float32(jnp.nan)}
            return new_state, stats

        return run

    monkeypatch.setattr(training, "make_train_step", nan_from_step_3)
    with pytest.raises(
        TrainingError, match=r"step 3: the loss is nan; .*\(last good checkpoint: step 2\)"
    ):
        training.train_and_evaluate(config, str(tmp_path / "w"))
    assert not (tmp_path / "w" / "prompt_model").exists()
    assert not (tmp_path / "w" / "result.json").exists()
    # A non-finite table is never written as a prompt model.
    bad = PromptModel({"t": np.full((2, 4), np.nan, np.float32)}, [], {}, {}, {})
    with pytest.raises(CheckpointError, match="non-finite values"):
        save_prompt_model(tmp_path / "p", bad)
    assert not (tmp_path / "p").exists()


def test_nemo_path_never_replaces_a_folder_that_is_not_a_prompt_model(tiny, tmp_path):
    precious = tmp_path / "my_notes"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    config = tiny_config(*tiny)
    config.model.nemo_path = str(precious)
    with pytest.raises(CheckpointError, match="is not a ptlearn prompt model"):
        training.train_and_evaluate(config, str(tmp_path / "w"))
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "w" / "checkpoints").exists()  # refused before any training
    # An earlier prompt model there is replaced.
    config.model.nemo_path = str(tmp_path / "pm")
    training.train_and_evaluate(config, str(tmp_path / "w1"))
    training.train_and_evaluate(config, str(tmp_path / "w2"))
    assert (tmp_path / "pm" / "prompt_model.json").is_file()


def test_damaged_prompt_models_are_refused_on_load(tiny, tmp_path):
    import json

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from ptlearn import predict
    from ptlearn.checkpoints.prompt_model import _with_metric, load_prompt_model

    run = training.train_and_evaluate(tiny_config(*tiny), str(tmp_path / "w"))
    folder = tmp_path / "w" / "prompt_model"
    tables_file, meta_file = folder / "prompt_tables.safetensors", folder / "prompt_model.json"
    good_tables, good_meta = load_file(str(tables_file)), meta_file.read_text()

    def damaged(tables=None, meta=None, match=""):
        save_file(tables or good_tables, str(tables_file))
        meta_file.write_text(json.dumps(meta) if meta is not None else good_meta)
        with pytest.raises(CheckpointError, match=match):
            predict.load_prompted_lm(run.prompt_model)

    nan = {"sentiment": np.full_like(good_tables["sentiment"], np.nan)}
    damaged(tables=nan, match="not finite float32")
    as_int = {"sentiment": good_tables["sentiment"].view(np.int32)}
    damaged(tables=as_int, match="not finite float32")
    meta = json.loads(good_meta)
    few = {"sentiment": good_tables["sentiment"][:2]}
    damaged(tables=few, meta={**meta, "table_shapes": {"sentiment": [2, 64]}}, match="asks for 4")
    damaged(meta={**meta, "label_sets": {"sentiment": [1, 2]}}, match="list of strings")
    damaged(meta={**meta, "templates": "oops"}, match="'templates' is missing or not a list")
    wide = {"sentiment": np.zeros((4, 32), np.float32)}
    damaged(tables=wide, meta={**meta, "table_shapes": {"sentiment": [4, 32]}}, match="cannot take")
    save_file(good_tables, str(tables_file))
    meta_file.write_text(good_meta)
    assert load_prompt_model(folder).tables["sentiment"].shape == (4, 64)
    assert load_prompt_model(folder).templates[0]["metric"] == "accuracy"
    # A prompt model from before templates named their metric: its task's old metric.
    legacy = [{k: v for k, v in t.items() if k != "metric"} for t in meta["templates"]]
    meta_file.write_text(json.dumps({**meta, "templates": legacy}))
    assert load_prompt_model(folder).templates[0]["metric"] == "accuracy"
    legacy[0]["taskname"] = "squad"
    assert _with_metric(legacy[0])["metric"] == "squad"


def test_predict_checks_pred_file_and_batch_size_before_any_work(tmp_path):
    def predict_cli(*flags):
        return subprocess.run(
            [sys.executable, "-m", "ptlearn.predict", "--prompt_model=/none", "--data=x.jsonl"]
            + list(flags),
            capture_output=True,
            text=True,
            timeout=300,
        )

    for flags, words in (
        ([f"--pred_file={tmp_path}"], "is a folder"),
        ([f"--pred_file={tmp_path / 'no' / 'p.txt'}"], "does not exist"),
        ([f"--pred_file={tmp_path / 'p.txt'}", "--config.inference.batch_size=0"], "must be >= 1"),
    ):
        proc = predict_cli(*flags)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert words in proc.stderr.strip().splitlines()[-1]


def test_empty_answers_are_warned_about_and_no_label(tiny, tmp_path, caplog):
    import json

    model, data = tiny
    lines = data["train"].read_text().splitlines()
    record = json.loads(lines[2])
    lines[2] = json.dumps({**record, "label": " "})
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    config = tiny_config(model, data)
    config.model.data.train_ds = (str(train),)
    with caplog.at_level(logging.WARNING):
        s = training.setup(config)
    assert s.label_sets["sentiment"] == ["negative", "neutral", "positive"]
    assert any(
        f"{train}:3" in r.getMessage() and "empty answer" in r.getMessage() for r in caplog.records
    )


def test_an_unwritable_workdir_is_refused_before_any_work(tiny, tmp_path):
    from ptlearn.errors import WorkdirError

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(
        WorkdirError, match=r"workdir .*notes.txt/w cannot be written .*nothing ran"
    ):
        training.train_and_evaluate(tiny_config(*tiny), str(a_file / "w"))


@pytest.mark.parametrize(("code", "says"), [("ENOSPC", "is full"), ("EROFS", "became read-only")])
def test_a_workdir_failing_mid_run_names_the_safe_step_and_the_rerun_resumes(
    tiny, tmp_path, monkeypatch, code, says
):
    """The disk fills (or turns read-only) at the checkpoint of step 4: one line saying step
    2 is safe; the rerun resumes from it and ends where an uninterrupted run ends."""
    import errno

    import numpy as np

    from ptlearn.checkpoints import train_state
    from ptlearn.checkpoints.prompt_model import load_prompt_model
    from ptlearn.errors import WorkdirError

    config = tiny_config(*tiny)
    config.trainer.val_check_interval = 2
    whole = training.train_and_evaluate(config, str(tmp_path / "whole"))
    real = train_state.TrainCheckpoints.save

    def fail_at_step_4(self, step, state, metrics=None, window=None):
        if step == 4:
            raise OSError(
                getattr(errno, code), os.strerror(getattr(errno, code)), str(self.directory)
            )
        return real(self, step, state, metrics, window)

    monkeypatch.setattr(train_state.TrainCheckpoints, "save", fail_at_step_4)
    workdir = tmp_path / "w"
    with pytest.raises(
        WorkdirError, match=rf"workdir {workdir} {says} .*last complete checkpoint is step 2"
    ):
        training.train_and_evaluate(config, str(workdir))
    monkeypatch.setattr(train_state.TrainCheckpoints, "save", real)
    again = training.train_and_evaluate(config, str(workdir))
    a, b = load_prompt_model(whole.prompt_model), load_prompt_model(again.prompt_model)
    np.testing.assert_array_equal(a.tables["sentiment"], b.tables["sentiment"])
