"""Training on the tiny model: only prompts change, artifacts, resume after SIGKILL, new tasks."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tiny_model import tiny_config, tiny_subprocess_env, write_tiny_data, write_tiny_model

from ptlearn import predict, training
from ptlearn.checkpoints import load_model
from ptlearn.checkpoints.prompt_model import load_prompt_model
from ptlearn.data.jsonl import read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


@pytest.mark.parametrize("style", ["p-tuning", "prompt-tuning"])
def test_one_step_changes_only_prompt_parameters(tiny, style):
    config = tiny_config(*tiny, style=style)
    s = training.setup(config)
    state, frozen, tx, _ = training.init_state(s, 6)
    lm_before = jax.tree.map(np.array, frozen["lm"])
    prompt_before = jax.tree.map(np.array, state["trainable"]["prompt"])
    assert all(
        leaf is None
        for leaf in jax.tree.leaves(state["trainable"]["lm"], is_leaf=lambda x: x is None)
    )
    batch = training.Batches(s).get(0, 0)
    new_state, stats = training.make_train_step(s, tx)(state, frozen, batch)
    assert np.isfinite(float(stats["loss"]))
    # The frozen partition is never an output of the step: it is the same buffers, unchanged.
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, frozen["lm"]), lm_before)
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(np.asarray(a), b),
        new_state["trainable"]["prompt"],
        prompt_before,
    )
    assert all(jax.tree.leaves(changed))
    # Optimizer moments exist for prompt leaves only: their sizes add up to 2 x the prompt's.
    prompt_size = sum(x.size for x in jax.tree.leaves(prompt_before))
    moment_size = sum(
        x.size for x in jax.tree.leaves(new_state["opt_state"]) if hasattr(x, "size") and x.ndim > 0
    )
    assert moment_size == 2 * prompt_size


def test_train_then_predict(tiny, tmp_path, capsys):
    model, data = tiny
    config = tiny_config(model, data)
    result = training.train_and_evaluate(config, str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "tokens_per_s", "real_tokens_per_s"} <= set(steps[0])
    assert sum("val_loss" in r for r in records) == 3
    assert any("val_sentiment/accuracy" in r for r in records)
    assert list((tmp_path / "tensorboard").iterdir())
    artifact = tmp_path / "prompt_model"
    assert result.prompt_model == str(artifact)
    size = sum(f.stat().st_size for f in artifact.iterdir())
    assert size < 50_000  # prompt tables and metadata only, never base weights
    prompt_model = load_prompt_model(artifact)
    assert prompt_model.tables["sentiment"].shape == (4, 64)
    assert prompt_model.label_sets["sentiment"] == ["negative", "neutral", "positive"]

    lm, _ = predict.load_prompted_lm(str(artifact))
    records = [(i + 1, r) for i, r in enumerate(read_jsonl(data["test"]))]
    preds = predict.predict_records(lm, records, config.inference)
    assert len(preds) == len(records)
    ranking = config.inference.copy_and_resolve_references()
    ranking.rank_classification = True
    ranked = predict.predict_records(lm, records, ranking, label_sets=prompt_model.label_sets)
    assert set(ranked) <= {"negative", "neutral", "positive"} and len(ranked) == len(records)


CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
import pathlib
from tiny_model import tiny_config


def get_config():
    data = {{k: pathlib.Path(v) for k, v in {data!r}.items()}}
    c = tiny_config(pathlib.Path({model!r}), data)
    c.trainer.max_steps = 40
    c.trainer.val_check_interval = {val_check_interval}
    c.trainer.log_every_n_steps = {log_every_n_steps}
    return c
"""


def _write_config(tmp_path, model, data, val_check_interval=5, log_every_n_steps=5):
    path = tmp_path / "tiny_config.py"
    tests = os.path.dirname(os.path.abspath(__file__))
    path.write_text(
        CONFIG_FILE.format(
            tests=tests,
            model=str(model),
            data={k: str(v) for k, v in data.items()},
            val_check_interval=val_check_interval,
            log_every_n_steps=log_every_n_steps,
        )
    )
    return path


def _run(cmd, **kwargs):
    env = tiny_subprocess_env()
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, **kwargs)


def _losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("kill_trials", [5, pytest.param(20, marks=pytest.mark.stress)])
def test_kill_9_at_random_moments_then_reruns_end_bit_identical(tiny, tmp_path, kill_trials):
    """kill -9s at random moments (start-up, steps, checkpoint writes, the end) of a run that
    checkpoints every 2 steps, each followed by a rerun: the last rerun ends with the
    uninterrupted run's prompt table and losses, bit for bit. 5 trials in the default run,
    20 with `-m stress`."""
    import random

    # Every step's own loss is logged: a resumed run's first window is shorter, so windowed
    # means would differ while the steps are identical.
    config_file = _write_config(tmp_path, *tiny, val_check_interval=2, log_every_n_steps=1)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cmd = [sys.executable, "-m", "ptlearn.train", f"--config={config_file}"]
    started = time.time()
    done = _run(cmd + [f"--workdir={whole}"])
    assert done.returncode == 0, done.stderr[-2000:]
    run_seconds = time.time() - started

    env = tiny_subprocess_env()
    rng = random.Random(0)
    kills = attempts = 0
    while kills < kill_trials and attempts < 2 * kill_trials:
        attempts += 1
        proc = subprocess.Popen(
            cmd + [f"--workdir={killed}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(timeout=rng.uniform(0.3, 0.8 * run_seconds))
            assert proc.returncode == 0  # ran to the end first: start the chain over
            subprocess.run(["rm", "-rf", str(killed)], check=True)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    assert kills == kill_trials, (kills, attempts)

    again = _run(cmd + [f"--workdir={killed}"])
    assert again.returncode == 0, again.stderr[-2000:]
    a = load_prompt_model(whole / "prompt_model")
    b = load_prompt_model(killed / "prompt_model")
    np.testing.assert_array_equal(a.tables["sentiment"], b.tables["sentiment"])
    assert a.training["best_step"] == b.training["best_step"]
    whole_losses, killed_losses = _losses(whole), _losses(killed)
    assert sorted(killed_losses) == sorted(whole_losses)
    assert killed_losses == whole_losses


def test_adding_a_task_keeps_old_prompts_bit_identical(tiny, tmp_path):
    model, data = tiny
    first = training.train_and_evaluate(tiny_config(model, data), str(tmp_path / "first"))
    old = load_prompt_model(first.prompt_model)

    topic = tmp_path / "topic.jsonl"
    write_jsonl(
        topic,
        [
            {"taskname": "topic", "text": r["sentence"], "answer": r["sentence"].split()[0]}
            for r in read_jsonl(data["train"])
        ],
    )
    config = tiny_config(model, data)
    config.model.restore_path = first.prompt_model
    config.model.existing_tasks = ("sentiment",)
    config.model.new_tasks = ("topic",)
    config.model.task_templates = (
        dict(
            taskname="topic",
            prompt_template="<|VIRTUAL_PROMPT_0|> {text} first word:{answer}",
            total_virtual_tokens=3,
            virtual_token_splits=(3,),
            answer_field="answer",
            truncate_field=None,
            answer_only_loss=True,
        ),
    )
    config.model.data.train_ds = (str(topic),)
    config.model.data.validation_ds = (str(topic),)
    second = training.train_and_evaluate(config, str(tmp_path / "second"))
    new = load_prompt_model(second.prompt_model)
    assert sorted(new.tables) == ["sentiment", "topic"]
    assert new.tables["sentiment"].tobytes() == old.tables["sentiment"].tobytes()

    records = [(i + 1, r) for i, r in enumerate(read_jsonl(data["test"]))]
    before, _ = predict.load_prompted_lm(first.prompt_model)
    after, _ = predict.load_prompted_lm(second.prompt_model)
    assert predict.predict_records(before, records, config.inference) == predict.predict_records(
        after, records, config.inference
    )


def _one_step(config):
    s = training.setup(config)
    state, frozen, tx, _ = training.init_state(s, 6)
    batch = training.Batches(s).get(0, 0)
    new_state, stats = training.make_train_step(s, tx)(state, frozen, batch)
    return new_state, stats, batch


def test_gradient_accumulation_equals_one_big_batch(tiny):
    accumulated = tiny_config(*tiny)  # global 8 = 2 micro-batches of 4
    whole = tiny_config(*tiny)
    whole.model.micro_batch_size = 8
    state_a, stats_a, batch_a = _one_step(accumulated)
    state_b, stats_b, batch_b = _one_step(whole)
    assert batch_a["ids"].shape[:2] == (2, 4) and batch_b["ids"].shape[:2] == (1, 8)
    np.testing.assert_array_equal(batch_a["ids"].reshape(8, -1), batch_b["ids"][0])
    assert float(stats_a["loss"]) == pytest.approx(float(stats_b["loss"]), rel=1e-6)
    assert float(stats_a["grad_norm"]) == pytest.approx(float(stats_b["grad_norm"]), rel=1e-5)
    # Adam's first step is ~lr * sign(g): summation-order noise shows only where g is ~0.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        state_a["trainable"],
        state_b["trainable"],
    )


def test_bfloat16_precision_trains(tiny):
    fp32 = tiny_config(*tiny)
    bf16 = tiny_config(*tiny)
    bf16.trainer.precision = "bf16"
    _, stats32, _ = _one_step(fp32)
    _, stats16, _ = _one_step(bf16)
    assert np.isfinite(float(stats16["loss"]))
    assert float(stats16["loss"]) == pytest.approx(float(stats32["loss"]), rel=0.05)


def test_frozen_weights_in_bfloat16_prompts_and_optimizer_in_float32(tiny):
    config = tiny_config(*tiny)
    config.model.frozen_weights_dtype = "bfloat16"
    s = training.setup(config)
    # The base model is read straight into bfloat16 (no float32 copy of it is held).
    assert {x.dtype for x in jax.tree.leaves(s.loaded.params)} == {np.dtype("bfloat16")}
    wide = load_model(config.model.language_model_path).params["layers"]["mlp"]["up"]["kernel"]
    expected = np.asarray(wide, jax.numpy.bfloat16)
    state, frozen, tx, _ = training.init_state(s, 6)
    # The host copy is gone once the weights are on the device; a second run shares them.
    assert s.loaded.params is None
    again, frozen_again, _, _ = training.init_state(s, 6)
    pairs = zip(jax.tree.leaves(frozen_again["lm"]), jax.tree.leaves(frozen["lm"]), strict=True)
    assert all(a is b for a, b in pairs)  # the same device arrays, not a second copy
    jax.tree.map(np.testing.assert_array_equal, again["trainable"], state["trainable"])
    # The block stack travels as the uint16 bits of its bfloat16 weights (gpt.pack_params).
    lm = frozen["lm"]
    assert {x.dtype for x in jax.tree.leaves(lm["layers"])} == {np.dtype("uint16")}
    assert {x.dtype for x in jax.tree.leaves({**lm, "layers": None})} == {np.dtype("bfloat16")}
    unpacked = np.asarray(lm["layers"]["mlp"]["up"]["kernel"]).view(jax.numpy.bfloat16)
    np.testing.assert_array_equal(unpacked, expected)
    new_state, stats = training.make_train_step(s, tx)(state, frozen, training.Batches(s).get(0, 0))
    assert {x.dtype for x in jax.tree.leaves(new_state["trainable"])} == {np.dtype("float32")}
    moments = [x for x in jax.tree.leaves(new_state["opt_state"]) if getattr(x, "ndim", 0) > 0]
    assert {x.dtype for x in moments} == {np.dtype("float32")}
    assert np.isfinite(float(stats["loss"]))


def test_a_stop_inside_a_logging_window_resumes_the_logged_loss(tiny, tmp_path, monkeypatch):
    """A stop saved at step 3 of a 5-step logging window (validation every 3): the resumed run
    logs step 5's loss over steps 1-5 (the saved window), as the uninterrupted run does."""
    import contextlib

    from ptlearn.run_guards import Interrupted

    config = tiny_config(*tiny)
    config.trainer.val_check_interval, config.trainer.log_every_n_steps = 3, 5
    whole = training.train_and_evaluate(config, str(tmp_path / "whole"))
    received = []
    validate = training.validate_tasks

    def stop_at_first_validation(*args, **kwargs):
        received.append(signal.SIGTERM)  # what the SIGTERM handler does, without a real signal
        return validate(*args, **kwargs)

    monkeypatch.setattr(training, "stop_signals", lambda: contextlib.nullcontext(received))
    monkeypatch.setattr(training, "validate_tasks", stop_at_first_validation)
    with pytest.raises(Interrupted, match="at step 3"):
        training.train_and_evaluate(config, str(tmp_path / "stopped"))
    assert (tmp_path / "stopped" / "checkpoints" / "log_window" / "3.json").is_file()
    monkeypatch.undo()
    training.train_and_evaluate(config, str(tmp_path / "stopped"))
    assert _losses(tmp_path / "stopped") == _losses(tmp_path / "whole")
    assert sorted(_losses(tmp_path / "whole")) == [5, 6] and whole.final


@pytest.mark.slow
def test_sigterm_saves_its_step_and_the_rerun_resumes_bit_identically(tiny, tmp_path):
    import re

    config_file = _write_config(tmp_path, *tiny)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    cmd = [sys.executable, "-m", "ptlearn.train", f"--config={config_file}"]
    done = _run(cmd + [f"--workdir={whole}"])
    assert done.returncode == 0, done.stderr[-2000:]
    env = tiny_subprocess_env()
    proc = subprocess.Popen(
        cmd + [f"--workdir={stopped}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = stopped / "checkpoints" / "last"
    deadline = time.time() + 300
    while time.time() < deadline and not (
        last.is_dir() and any(p.name.isdigit() for p in last.iterdir())
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    step = int(re.search(r"stopped: SIGTERM at step (\d+)", err).group(1))
    assert step < 40 and (last / str(step)).is_dir()  # the very step it stopped at is saved
    assert "Traceback" not in err and not (stopped / "prompt_model").exists()
    again = _run(cmd + [f"--workdir={stopped}"])
    assert again.returncode == 0, again.stderr[-2000:]
    a = load_prompt_model(whole / "prompt_model")
    b = load_prompt_model(stopped / "prompt_model")
    np.testing.assert_array_equal(a.tables["sentiment"], b.tables["sentiment"])
    assert _losses(stopped) == _losses(whole)
