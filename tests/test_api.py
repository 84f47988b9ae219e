"""The public Python API (load_config, train, load -> PromptedLM) and the CLI are one run."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file
from tiny_model import write_tiny_data

import ptlearn
from ptlearn import config_checks, evaluation, files, predict
from ptlearn.data import toy
from ptlearn.errors import ConfigError, PtlearnError

# A shipped config on the shipped tiny model: a few seconds per run.
ARG = "model=tiny,steps=4,virtual=4,init=vocab"
OVERRIDES = {
    "model.optim.lr": 0.05,
    "model.optim.sched.warmup_steps": 1,
    "model.global_batch_size": 8,
    "model.micro_batch_size": 8,
    "model.max_seq_length": 64,
    "trainer.val_check_interval": 2,
    "model.data.validation_metric_examples": 4,
    "inference.tokens_to_generate": 3,
}


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    write_tiny_data(folder)
    return folder


def _config(data, **extra):
    return ptlearn.load_config(
        "sentiment_prompt_tuning", f"{ARG},data={data}", **{**OVERRIDES, **extra}
    )


def _cli(args, **env):
    return subprocess.run(
        [sys.executable, "-m", "ptlearn.train", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )


def _cli_flags(data, **extra):
    values = {**OVERRIDES, **extra}
    return [f"--config=sentiment_prompt_tuning:{ARG},data={data}"] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


def test_load_config_by_name_path_and_arg_is_locked(toy_data):
    by_name = _config(toy_data)
    assert by_name.model.optim.lr == 0.05 and by_name.model.language_model_path == "tiny"
    assert by_name.model.task_templates[0].total_virtual_tokens == 4
    assert tuple(by_name.model.task_templates[0].virtual_token_splits) == (4,)
    by_path = ptlearn.load_config(
        f"configs/sentiment_prompt_tuning.py:{ARG},data={toy_data}", **OVERRIDES
    )
    assert by_path.to_dict() == by_name.to_dict()
    with pytest.raises(
        ConfigError, match=r"unknown config key model.optim.lrr \(did you mean 'lr'"
    ):
        ptlearn.load_config("sentiment_prompt_tuning", **{"model.optim.lrr": 1.0})
    with pytest.raises(ConfigError, match="model.optim.lr"):
        ptlearn.load_config("sentiment_prompt_tuning", **{"model.optim.lr": "fast"})
    with pytest.raises(ConfigError, match="no shipped config"):
        ptlearn.load_config("no_such_config")
    with pytest.raises(AttributeError):
        by_name.model.new_key = 1  # locked, as on the command line


def test_train_and_cli_give_bitwise_the_same_prompt_and_records(toy_data, tmp_path):
    run = ptlearn.train(_config(toy_data), tmp_path / "api")
    assert isinstance(run, ptlearn.Run)
    assert run.final_step == 4 and run.best_step in (2, 4) and run.stopped is None
    assert [r["step"] for r in run.history if "loss" in r] == [4]  # log_every_n_steps=10
    assert "val_loss" in run.best and run.best["step"] == run.best_step
    assert {"test_loss", "test_sentiment/accuracy"} <= set(run.test)
    assert run.trainable_parameters == 4 * 64 and run.wall_time_s > 0
    assert json.loads((tmp_path / "api" / "test_metrics.json").read_text()) == run.test

    proc = _cli([*_cli_flags(toy_data), f"--workdir={tmp_path / 'cli'}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["final_step"] == 4 and summary["test"].keys() == run.test.keys()
    tables = [
        load_file(str(tmp_path / w / "prompt_model/prompt_tables.safetensors"))
        for w in ("api", "cli")
    ]
    np.testing.assert_array_equal(tables[0]["sentiment"], tables[1]["sentiment"])
    configs = [json.loads((tmp_path / w / "config.json").read_text()) for w in ("api", "cli")]
    assert configs[0] == configs[1]
    # No INFO noise from orbax / absl by default: ptlearn's own lines only.
    assert "checkpoint_manager" not in proc.stderr and "step 4/4" in proc.stderr

    record = json.loads((tmp_path / "api" / "run_record.json").read_text())
    assert record["config"] == configs[0] and record["versions"]["jax"]
    assert set(record["data"]) == {str(toy_data / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert "model.optim.lr = 0.05" in (tmp_path / "api" / "config.txt").read_text()
    artifact = json.loads((tmp_path / "api" / "prompt_model" / "prompt_model.json").read_text())
    assert artifact["run_record"]["config"] == configs[0]
    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "api").rglob("*"):  # orbax's checkpoints included
        mode = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_rerun_under_a_changed_config_names_the_key(toy_data, tmp_path):
    workdir = tmp_path / "w"
    first = _cli([*_cli_flags(toy_data), f"--workdir={workdir}"])
    assert first.returncode == 0, first.stderr[-2000:]
    changed = _cli([*_cli_flags(toy_data, **{"model.optim.lr": 0.01}), f"--workdir={workdir}"])
    assert changed.returncode == 2
    (line,) = [x for x in changed.stderr.splitlines() if x.startswith("error:")]
    assert "model.optim.lr: 0.05 -> 0.01" in line and "--allow_config_change" in line
    assert "Traceback" not in changed.stderr
    allowed = _cli(
        [*_cli_flags(toy_data, **{"model.optim.lr": 0.01}), f"--workdir={workdir}"]
        + ["--allow_config_change"]
    )
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    # The old config, record and result kept beside; the new result is the new run's.
    for name in ("config", "run_record", "result", "test_metrics"):
        assert len(list(workdir.glob(f"{name}.*.json"))) == 1, name
    assert json.loads((workdir / "config.json").read_text())["model"]["optim"]["lr"] == 0.01
    typo = _cli([*_cli_flags(toy_data), "--config.model.optim.lrr=1", f"--workdir={workdir}"])
    assert typo.returncode == 2 and typo.stderr.strip().splitlines()[-1] == (
        "error: --config.model.optim.lrr: no such config key 'lrr' (Did you mean \"lr\"?)"
    )


def test_a_key_added_later_at_its_default_is_no_change():
    from ptlearn import config_lib, runs

    new = runs.config_dict(config_lib.base_config())
    old = json.loads(json.dumps(new))
    del old["model"]["prefix_tuning"]  # a run recorded before deep prompts existed
    assert runs.changed_keys(old, new) == []
    new["model"]["prefix_tuning"]["projection"] = True
    assert runs.changed_keys(old, new) == ["model.prefix_tuning.projection"]
    del new["inference"]["stop_strings"]  # a key the new config lacks is always a change
    assert "inference.stop_strings" in runs.changed_keys(old, new)


def test_the_record_holds_each_template_and_a_changed_wording_is_a_change():
    from ptlearn import config_lib, runs

    config = config_lib.base_config()
    config.model.task_templates = (
        config_lib.task_template(
            "qa", "<|VIRTUAL_PROMPT_0|> Q: {question} A: {answer}", 4, [4], "answer"
        ),
    )
    old = runs.config_dict(config)
    assert old["model"]["task_templates"][0]["prompt_template"].endswith("A: {answer}")
    config.model.task_templates[0].prompt_template = "<|VIRTUAL_PROMPT_0|> {question} {answer}"
    assert runs.changed_keys(old, runs.config_dict(config)) == ["model.task_templates"]
    # A record from before templates were kept whole (their keys only) strands no run.
    keys_only = json.loads(json.dumps(old))
    keys_only["model"]["task_templates"] = [sorted(old["model"]["task_templates"][0])]
    assert runs.changed_keys(keys_only, runs.config_dict(config)) == []


def test_one_run_per_workdir(toy_data, tmp_path):
    with files.exclusive(tmp_path, "run"):
        with pytest.raises(ConfigError, match=r"in use by pid \d+, another ptlearn process"):
            ptlearn.train(_config(toy_data), tmp_path)
        busy = _cli([*_cli_flags(toy_data), f"--workdir={tmp_path}"])
        assert busy.returncode == 2 and "another ptlearn process" in busy.stderr
        assert f"in use by pid {os.getpid()}" in busy.stderr


def test_zero_shot_run_without_virtual_tokens_or_steps(toy_data, tmp_path):
    config = ptlearn.load_config(
        "sentiment_prompt_tuning",
        f"model=tiny,data={toy_data},virtual=0",
        **{"trainer.max_steps": 0, "inference.rank_classification": True},
    )
    assert "VIRTUAL" not in config.model.task_templates[0].prompt_template
    # No virtual tokens need no init text (experiments/recipes' zero-shot arms have none).
    config.model.prompt_tuning.new_prompt_init_text = ("",)
    run = ptlearn.train(config, tmp_path)
    assert run.final_step == 0 and run.trainable_parameters == 0
    # What the shipped config's "auto" numerics became on this machine is on the record.
    record = json.loads((tmp_path / "run_record.json").read_text())
    assert record["config"]["trainer"]["precision"] == "auto"
    assert record["numerics"]["trainer.precision"] in ("bf16", "32")
    assert run.test["test_sentiment/n"] == 12 and 0 <= run.test["test_sentiment/accuracy"] <= 1
    lm = ptlearn.load(run.prompt_model)
    assert lm.tables.shape[1] == 0
    assert lm.inference.rank_classification  # the run's inference options come along
    records = toy.sentences(6, 7)
    assert lm.predict(records) == lm.rank(records)


def test_limit_test_batches_scores_batches_spread_over_the_test_split(toy_data, tmp_path):
    config = ptlearn.load_config(
        "sentiment_prompt_tuning",
        f"model=tiny,data={toy_data},virtual=0",
        **{"trainer.max_steps": 0, "trainer.limit_test_batches": 2, "inference.batch_size": 4},
    )
    run = ptlearn.train(config, tmp_path)
    assert run.test["test_sentiment/n"] == 8  # of 12: two batches of 4
    with pytest.raises(ConfigError, match="trainer.limit_test_batches must be >= 0"):
        with config.unlocked():
            config.trainer.limit_test_batches = -1
        ptlearn.train(config, tmp_path / "bad")


def test_a_limited_validation_spreads_over_every_task_and_length():
    # Two tasks as a multitask validation set holds them: the first file's short examples,
    # then the second's long ones. The shortest or the first N would all be task "a".
    examples = [("a", n) for n in range(60)] + [("b", 1000 + n) for n in range(40)]
    chosen = evaluation.spread(examples, 10)
    assert len(chosen) == 10 and len(set(chosen)) == 10
    assert [task for task, _ in chosen].count("b") == 4  # in proportion: 40 of 100
    assert chosen == sorted(chosen)  # in the set's order, so a rerun sees the same ones
    assert evaluation.spread(examples, 0) == examples == evaluation.spread(examples, 500)


@pytest.mark.integration
def test_records_of_several_files_get_their_own_answers(default_model, toy_data, tmp_path):
    # Two test files' records repeat line numbers; each must still get its own answer (a
    # multitask run once scored every task on answers keyed by line number). The real model
    # zero-shot: its answers differ by sentence, the tiny model's do not.
    config = ptlearn.load_config(
        "sentiment_prompt_tuning",
        f"model=default,data={toy_data},virtual=0",
        **{"trainer.max_steps": 0, "inference.tokens_to_generate": 3},
    )
    lm = ptlearn.load(ptlearn.train(config, tmp_path).prompt_model)
    records = toy.sentences(4, 3)
    alone = lm.predict(records)  # one file: unique line numbers
    # Lines 1, 2, 1, 2: with answers keyed by line number, records 0 and 2 would share one.
    assert alone[0] != alone[2] and alone[1] != alone[3], alone
    same_lines = [(1 + i % 2, r) for i, r in enumerate(records)]
    assert predict.predict_records(lm, same_lines, lm.inference) == alone


def test_predict_cli_answers_as_the_python_api(toy_data, tmp_path):
    run = ptlearn.train(_config(toy_data), tmp_path / "w")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptlearn.predict",
            f"--prompt_model={run.prompt_model}",
            f"--data={toy_data / 'test.jsonl'}",
            f"--pred_file={tmp_path / 'pred.txt'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from ptlearn.data.jsonl import read_jsonl

    expected = ptlearn.load(run.prompt_model).predict(read_jsonl(toy_data / "test.jsonl"))
    assert (tmp_path / "pred.txt").read_text().splitlines() == expected
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] == run.test["test_sentiment/accuracy"]


def test_time_limit_stop_is_recorded(toy_data, tmp_path):
    config = _config(toy_data, **{"trainer.max_steps": 1000, "trainer.max_time_minutes": 1e-4})
    run = ptlearn.train(config, tmp_path)
    assert run.stopped == "max_time_minutes" and run.final_step < 1000
    assert any(r.get("stopped") == "max_time_minutes" for r in run.history)


def test_prompted_lm_predict_rank_generate_evaluate(toy_data, tmp_path):
    run = ptlearn.train(_config(toy_data), tmp_path)
    lm = ptlearn.load(run.prompt_model)
    assert len(lm.predict(["profit rose", "sales fell"], task="sentiment")) == 2
    records = toy.sentences(6, 7)
    ranked = lm.rank(records)
    assert len(ranked) == 6 and set(ranked) <= set(toy.LABELS)
    assert lm.rank([r["sentence"] for r in records], task="sentiment") == ranked
    (text,) = lm.generate(["profit"], tokens_to_generate=4)
    assert isinstance(text, str)
    # stop_strings: the answer is what came before the first of them.
    raw = lm.predict(records, tokens_to_generate=6)
    stop = next(c for a in raw for c in a[1:] if not c.isspace())
    stopped = lm.predict(records, tokens_to_generate=6, stop_strings=(stop, "\x00never"))
    assert stopped == [a.split(stop)[0].strip() for a in raw]
    with pytest.raises(PtlearnError, match="stop_strings"):
        lm.predict(records, stop_strings=("",))
    # Validation's "auto": rank classification where the task has a closed label set.
    numbered = list(enumerate(records, 1))
    closed = {"sentiment": list(toy.LABELS)}
    assert evaluation.answers(lm, numbered, lm.inference, closed, "auto") == ranked
    assert evaluation.answers(lm, numbered, lm.inference, {}, "auto") == lm.predict(records)
    bad = ptlearn.load_config(
        "sentiment_prompt_tuning", "model=tiny", **{"model.data.validation_answers": "guess"}
    )
    with pytest.raises(ConfigError, match="validation_answers"):
        config_checks.validate(bad)
    scores = lm.evaluate(records, rank_classification=True)
    expected = np.mean([p == r["label"] for p, r in zip(ranked, records, strict=True)])
    assert scores["sentiment"]["accuracy"] == pytest.approx(expected)
    with pytest.raises(PtlearnError, match="name its task"):
        lm.predict(["profit rose"])
    with pytest.raises(PtlearnError, match="not in this prompt model"):
        lm.predict(["x"], task="squad")
    with pytest.raises(ConfigError, match="tokens_to_generat"):
        lm.predict(["x"], task="sentiment", tokens_to_generat=3)
