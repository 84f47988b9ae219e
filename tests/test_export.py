"""PEFT interop: a trained task exported as a PEFT adapter and imported back predicts the same;
templates PEFT cannot express are refused; in the peer venv, PEFT's logits match ptlearn's."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from tiny_model import write_tiny_data

import ptlearn
from ptlearn import export
from ptlearn.checkpoints.prompt_model import load_prompt_model
from ptlearn.data import toy
from ptlearn.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEER_PYTHON = pathlib.Path(os.environ.get("PTLEARN_PEER_PYTHON", "/tmp/peer-venv/bin/python"))


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy_export")
    write_tiny_data(folder)
    return folder


def _train(toy_data, workdir, config_name):
    config = ptlearn.load_config(
        config_name,
        f"model=tiny,data={toy_data},virtual=4,steps=2,init=vocab",
        **{"model.optim.sched.warmup_steps": 1, "trainer.val_check_interval": 2},
    )
    return ptlearn.train(config, workdir)


@pytest.mark.parametrize(
    "config_name, peft_type",
    [("sentiment_prompt_tuning", "PROMPT_TUNING"), ("sentiment_prefix_tuning", "PREFIX_TUNING")],
)
def test_export_and_import_back_predict_the_same(toy_data, tmp_path, config_name, peft_type):
    run = _train(toy_data, tmp_path / "run", config_name)
    adapter = export.to_peft(run.prompt_model, "sentiment", tmp_path / "adapter")
    assert adapter["peft_type"] == peft_type and adapter["num_virtual_tokens"] == 4
    saved = json.loads((tmp_path / "adapter" / export.ADAPTER_CONFIG).read_text())
    assert saved == adapter
    original = load_prompt_model(run.prompt_model)
    template = original.templates[0]
    labels = original.label_sets["sentiment"]
    back = export.from_peft(
        tmp_path / "adapter", template, "tiny", tmp_path / "back", labels=labels
    )
    table, again = original.tables["sentiment"], load_prompt_model(back).tables["sentiment"]
    np.testing.assert_allclose(again, table, atol=1e-5)
    if peft_type == "PREFIX_TUNING":  # keys leave rotated by their slot: slot 0 unchanged
        from safetensors.numpy import load_file

        flat = load_file(str(tmp_path / "adapter" / export.ADAPTER_WEIGHTS))["prompt_embeddings"]
        exported = flat.reshape(table.shape)
        np.testing.assert_allclose(exported[0], table[0], atol=1e-6)
        assert not np.allclose(exported[1, :, 0], table[1, :, 0])
        np.testing.assert_array_equal(exported[:, :, 1], table[:, :, 1])  # values as they are
    records = toy.sentences(6, 11)
    assert ptlearn.load(back).rank(records) == ptlearn.load(run.prompt_model).rank(records)


def test_templates_peft_cannot_express_are_refused(toy_data, tmp_path):
    run = _train(toy_data, tmp_path / "run", "sentiment_prompt_tuning")
    template = load_prompt_model(run.prompt_model).templates[0]
    export.to_peft(run.prompt_model, "sentiment", tmp_path / "a")
    late = {**template, "prompt_template": "{sentence} <|VIRTUAL_PROMPT_0|> sentiment: {label}"}
    with pytest.raises(ConfigError, match="text before them"):
        export.from_peft(tmp_path / "a", late, "tiny", tmp_path / "b")
    two = {
        **template,
        "prompt_template": "<|VIRTUAL_PROMPT_0|> {sentence} <|VIRTUAL_PROMPT_1|>: {label}",
        "virtual_token_splits": [2, 2],
    }
    with pytest.raises(ConfigError, match="has 2"):
        export.from_peft(tmp_path / "a", two, "tiny", tmp_path / "b")
    with pytest.raises(ConfigError, match="not in"):
        export.to_peft(run.prompt_model, "squad", tmp_path / "c")
    proc = subprocess.run(
        [sys.executable, "-m", "ptlearn.export", "peft", f"--prompt_model={run.prompt_model}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "needs --prompt_model, --task and --out" in proc.stderr


@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason=f"no PEFT venv at {PEER_PYTHON}")
def test_peft_loads_the_export_and_gives_the_same_logits(tmp_path, shared_dir):
    """experiments/peft_interop_check.py: both kinds, both ways, on the tiny model (the
    script's default, the real model, gave the published numbers), PEFT in the peer venv of
    ../shared/peer/README.md."""
    script = ROOT / "experiments" / "peft_interop_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "tiny", "4"],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "PTLEARN_PEER_PYTHON": str(PEER_PYTHON)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result) == 4  # export and import of prompt tuning and prefix tuning
    for name, numbers in result.items():
        assert numbers["max_abs_logit_diff"] < 1e-3, name
