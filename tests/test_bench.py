"""ptlearn.bench on the tiny model: every mode's JSON line, its arithmetic, and its errors."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from tiny_model import write_tiny_data, write_tiny_model

from ptlearn import bench, bench_data
from ptlearn.data import batching
from ptlearn.errors import PtlearnError

FIELDS = [
    "mode",
    "model",
    "dtype",
    "batch",
    "seq",
    "virtual_tokens",
    "steps",
    "median_s_per_step",
    "tokens_per_s",
    "real_tokens_per_s",
    "peak_rss_mb",
    "compile_s",
    "device",
]
SMALL = ["--steps=2", "--batch=2", "--seq=32"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def run(argv):
    """The benchmark that the command-line flags `argv` name (the CLI's own path)."""
    result = json.loads(json.dumps(bench.benchmark(bench.options(**_values(argv)))))
    for field in FIELDS:
        assert field in result, field
    assert result["peak_rss_mb"] > 50 and result["compile_s"] > 0
    assert 0 < result["peak_rss_after_load_mb"] <= result["peak_rss_mb"]
    return result


def rate(count, seconds):
    return pytest.approx(count / seconds, rel=0.02)


@pytest.mark.parametrize("mode", ["forward", "prompt", "ptune-mlp", "ptune-lstm"])
def test_fixed_shape_modes(tiny, mode):
    model, _ = tiny
    result = run([f"--model={model}", f"--mode={mode}", *SMALL])
    median = result["median_s_per_step"]
    assert result["mode"] == mode and result["steps"] == 2 and len(result["step_times_s"]) == 2
    assert median > 0
    # 10 virtual tokens + 32 text tokens, no padding; the loss on every text token (as PEFT).
    assert result["padded_length"] == 42 and result["loss_targets_per_row"] == 32
    assert result["loss_positions"] == "all text tokens"
    assert result["tokens_per_s"] == rate(2 * 42, median)
    assert result["real_tokens_per_s"] == rate(2 * 42, median)
    assert result["text_tokens_per_s"] == rate(2 * 32, median)
    assert result["frozen_lm_dtypes"] == ["float32"]
    if mode == "forward":
        assert result["loss"] is None
    else:
        # A near-uniform random model: the loss is about ln(vocab).
        assert abs(result["loss"] - math.log(320)) < 0.5
    hidden = 64
    expected_trainable = {
        "forward": 10 * hidden,
        "prompt": 10 * hidden,
        "ptune-mlp": 10 * hidden + 3 * (hidden * hidden + hidden),
    }
    if mode in expected_trainable:
        assert result["trainable_params"] == expected_trainable[mode]
    else:
        assert result["encoder"] == "lstm, 2 layers, hidden 64"


def test_answer_only_loss(tiny):
    model, _ = tiny
    result = run([f"--model={model}", "--mode=prompt", "--answer_tokens=4", *SMALL])
    assert result["loss_targets_per_row"] == 4 and result["loss_positions"] == "answer only"


def test_frozen_weights_in_bfloat16(tiny):
    model, _ = tiny
    full = run([f"--model={model}", "--mode=prompt", *SMALL])
    half = run([f"--model={model}", "--mode=prompt", "--frozen_dtype=bfloat16", *SMALL])
    assert half["frozen_lm_dtypes"] == ["bfloat16"] and half["dtype"] == "float32"
    assert half["frozen_lm_mb"] == pytest.approx(full["frozen_lm_mb"] / 2, abs=0.1)
    # Prompts stay float32: the same trainable parameters, nearly the same loss.
    assert half["trainable_params"] == full["trainable_params"]
    assert half["loss"] == pytest.approx(full["loss"], abs=0.05)


def test_remat_keeps_the_loss_and_profile_dir_writes_a_trace(tiny, tmp_path):
    model, _ = tiny
    plain = run([f"--model={model}", "--mode=prompt", *SMALL])
    flags = ["--remat=full", f"--profile_dir={tmp_path}", "--dtype=bfloat16"]
    remat = run([f"--model={model}", "--mode=prompt", *flags, *SMALL])
    assert remat["remat"] == "full" and remat["dtype"] == "bfloat16"
    assert remat["loss"] == pytest.approx(plain["loss"], abs=0.05)
    assert list(tmp_path.rglob("*.xplane.pb"))


def test_generate(tiny):
    model, _ = tiny
    argv = [f"--model={model}", "--mode=generate", "--steps=2", "--batch=2", "--new_tokens=16"]
    result = run(argv)
    median = result["median_s_per_step"]
    assert result["new_tokens"] == 16 and result["seq"] == result["prompt_len"] == 40
    # The 10 virtual tokens come from the task's prefix KV cache; the 40 text tokens are
    # left-padded to the next multiple of 16.
    assert result["cached_prefix_length"] == 10
    assert result["padded_prompt_length"] == 10 + 48
    assert result["gen_tokens_per_s"] == rate(2 * 16, median)
    assert result["real_tokens_per_s"] == rate(2 * (50 + 16), median)
    assert result["tokens_per_s"] == rate(2 * (58 + 16), median)


CONFIG = """
import pathlib
from tiny_model import tiny_config

def get_config(arg=None):
    data = {{"train": pathlib.Path({train!r}), "val": pathlib.Path({val!r})}}
    return tiny_config(pathlib.Path({model!r}), data, style=arg or "p-tuning")
"""


@pytest.fixture
def data_argv(tiny, tmp_path):
    """--data / --config flags for the tiny model's train split with prompt tuning."""
    model, data = tiny
    config = tmp_path / "tiny_cfg.py"
    config.write_text(
        CONFIG.format(train=str(data["train"]), val=str(data["val"]), model=str(model))
    )
    return [f"--data={data['train']}", f"--config={config}:prompt-tuning"]


def test_real_data_bucketed_and_padded(data_argv):
    argv = data_argv
    result = run([*argv, "--steps=3", "--batch=4", "--seq=64"])
    assert result["mode"] == "data" and result["style"] == "prompt-tuning"
    assert result["virtual_tokens"] == 4 and result["batch"] == 4
    assert 1 <= result["distinct_shapes"] <= 3
    assert max(result["lengths"]) < 64 and result["lengths_padded_to_seq"] == [64]
    assert result["distinct_shapes_padded_to_seq"] == 1
    # Same rows in both variants: padding to --seq only lowers the real share of the tokens.
    share = result["real_tokens_per_s"] / result["tokens_per_s"]
    share_padded = result["real_tokens_per_s_padded_to_seq"] / result["tokens_per_s_padded_to_seq"]
    assert 0 < share_padded < share <= 1
    assert result["compile_s"] >= 0 and result["median_s_per_step_padded_to_seq"] > 0


@pytest.mark.parametrize("remat", ["none", "full"])
def test_real_data_runs_the_remat_it_reports(data_argv, monkeypatch, remat):
    # The config's "auto" used to win over --remat in this mode, so the line said "none"
    # for runs that recomputed every block.
    from ptlearn import training

    seen = []
    setup = training.setup
    monkeypatch.setattr(
        training,
        "setup",
        lambda c: seen.append(c.model.activations_checkpoint_granularity) or setup(c),
    )
    result = run([*data_argv, f"--remat={remat}", "--steps=1", "--batch=2", "--seq=32"])
    assert result["remat"] == remat and seen == [bench.REMAT[remat]]


def test_pad_time_axis_matches_collate():
    examples = bench.synthetic_examples(3, 7, 2, 50, 3, seed=1)
    short = batching.collate(examples, {bench.TASK: 0}, batch_size=4, max_length=64, pad_id=5)
    long = batching.collate(
        examples,
        {bench.TASK: 0},
        batch_size=4,
        max_length=64,
        pad_id=5,
        length=32,
        num_targets=short["target_index"].shape[1],
    )
    padded = bench_data.pad_time_axis(short, 32, pad_id=5)
    assert padded.keys() == long.keys()
    for key in long:
        np.testing.assert_array_equal(padded[key], long[key], err_msg=key)


def test_synthetic_examples_mirror_peft_labels():
    (example,) = bench.synthetic_examples(1, 6, 3, 100, 0, seed=0)
    np.testing.assert_array_equal(example.virtual_index, [0, 1, 2, -1, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(example.loss_mask, [0, 0, 0, 1, 1, 1, 1, 1, 1])
    assert (example.ids[3:] >= bench.FIRST_ID).all() and (example.ids[3:] < 100).all()


def _values(argv):
    return dict(arg[2:].split("=", 1) for arg in argv)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--mode=backward"], "--mode=backward"),
        (["--mode=prompt", "--model=/no/such/model"], "no such file"),
        (["--mode=prompt", "--dtype=float64"], "--dtype"),
        (["--data=x.jsonl"], "--config"),
        (["--data=x.jsonl", "--config=/no/such.py"], "no such file"),
        (["--mode=prompt", "--steps=0"], "--steps"),
        (["--mode=prompt", "--steps=many"], "--steps"),
        (["--mode=prompt", "--unknown=1"], "unrecognized"),
    ],
)
def test_bad_options_name_the_flag(argv, words):
    with pytest.raises(PtlearnError, match=re.escape(words)):
        bench.benchmark(bench.options(**_values(argv)))


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--mode=backward"], "--mode=backward"),
        (["--mode=prompt", "--unknown=1"], "unknown"),
        (["--mode=prompt", "--steps=many"], "--steps"),
    ],
)
def test_cli_errors_are_one_line(argv, words):
    proc = subprocess.run(
        [sys.executable, "-m", "ptlearn.bench", "--model=tiny", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]
