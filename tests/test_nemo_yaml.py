"""NeMo prompt-learning yamls read as ptlearn configs: mapped keys, ignored keys with reasons,
Hydra interpolations, `???` values given on the command line, unknown keys refused."""

import json
import pathlib
import subprocess
import sys

import pytest

from ptlearn import config_checks, nemo_yaml
from ptlearn.data import toy
from ptlearn.data.jsonl import write_jsonl
from ptlearn.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
NEMO_YAML = "reference/nemo/megatron_gpt_prompt_learning_intent_n_slot.yaml"


def _write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_reference_yaml_maps_every_key_or_says_why_not(shared_dir):
    read = nemo_yaml.read(shared_dir / NEMO_YAML)
    c = read.config
    assert read.required == [
        "model.data.train_ds",
        "model.data.validation_ds",
        "model.language_model_path",
    ]
    assert c.trainer.precision == "16" and c.trainer.max_epochs == 25
    assert c.trainer.val_check_epochs == 1.0  # Lightning's float: once an epoch
    assert c.model.optim.lr == 1e-4 and c.model.optim.name == "fused_adam"
    assert c.model.optim.betas == (0.9, 0.98) and c.model.optim.weight_decay == 0.01
    assert c.model.nemo_path == "megatron_virtual_prompt_gpt.nemo"  # ${name}.nemo
    assert c.model.restore_path == "" and c.model.existing_tasks == ()
    assert c.model.p_tuning.encoder_type == "tpmlp"
    (template,) = c.model.task_templates
    assert template.prompt_template.endswith("{utterance} \nLabel:{label}")
    assert template.answer_only_loss is False and template.truncate_field is None
    assert read.ignored["model.data.load_cache"].startswith("examples are encoded in memory")
    assert "trainer.logger" in read.ignored and "name" in read.ignored
    # accelerator: gpu and num_workers: 8 are noted with what to use instead, not applied.
    assert read.ignored["trainer.accelerator"].startswith("JAX runs on the devices it finds")
    assert c.trainer.accelerator == "auto" and c.model.data.num_workers == 0
    with pytest.raises(ConfigError, match=r"model.data.train_ds, .*: required \(\?\?\? in"):
        config_checks.validate(c)


def test_interpolations_and_their_errors(tmp_path):
    path = _write(
        tmp_path,
        "name: run\nmodel:\n  tensor_model_parallel_size: 2\n  nemo_path: ${name}/p.nemo\n"
        "exp_manager:\n  explicit_log_dir: out_${model.tensor_model_parallel_size}\n"
        "trainer:\n  devices: ${model.tensor_model_parallel_size}\n  val_check_interval: 50\n",
    )
    c = nemo_yaml.read(path).config
    assert c.model.nemo_path == "run/p.nemo" and c.exp_manager.explicit_log_dir == "out_2"
    assert c.trainer.devices == 2 and c.trainer.val_check_interval == 50
    assert c.trainer.val_check_epochs == 0.0
    for text, match in (
        ("model:\n  nemo_path: ${nope.x}\n", r"\$\{nope.x\} names no key"),
        ("a: ${b}\nb: ${a}\n", "interpolation cycle"),
        ("model:\n  foo: 1\n  data:\n    bar: 2\n", "model.foo, model.data.bar"),
        ("model:\n  optim:\n    lr: fast\n", "model.optim.lr='fast': give a number"),
        ("model: [1, 2\n", "not valid YAML"),
        ("- 1\n", "top level is not a mapping"),
        (
            "model:\n  task_templates:\n  - taskname: t\n    fields: {}\n",
            r"unknown key\(s\) fields",
        ),
    ):
        with pytest.raises(ConfigError, match=match):
            nemo_yaml.read(_write(tmp_path, text))
    with pytest.raises(ConfigError, match="cannot read it"):
        nemo_yaml.read(tmp_path / "absent.yaml")


def _intent_data(tmp_path):
    records = [
        {"taskname": "intent_and_slot", "utterance": r["sentence"], "label": f"\n{r['label']}"}
        for r in toy.sentences(24, 3)
    ]
    path = tmp_path / "intent.jsonl"
    write_jsonl(path, records)
    return path


def _train_from_yaml(tmp_path, yaml_path, model, steps=1):
    data = _intent_data(tmp_path)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ptlearn.train",
            f"--config={REPO / 'configs/nemo.py'}:yaml={yaml_path}",
            f"--config.model.language_model_path={model}",
            f"--config.model.data.train_ds=('{data}',)",
            f"--config.model.data.validation_ds=('{data}',)",
            "--config.trainer.devices=1",
            f"--config.trainer.max_steps={steps}",
            # One step is shorter than the yaml's 50 warm-up steps of its cosine schedule.
            "--config.model.optim.sched.warmup_steps=0",
            f"--workdir={tmp_path / 'w'}",
            "--log_level=info",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )


def test_the_reference_yaml_trains_on_the_tiny_model(shared_dir, tmp_path):
    proc = _train_from_yaml(tmp_path, shared_dir / NEMO_YAML, "tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["final_step"] == 1
    assert "model.data.load_cache ignored" in proc.stderr
    # The prompt model goes where the yaml's nemo_path says, relative to where NeMo ran.
    assert (tmp_path / "megatron_virtual_prompt_gpt.nemo" / "prompt_model.json").is_file()
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptlearn.train",
            f"--config={REPO / 'configs/nemo.py'}:yaml={shared_dir / NEMO_YAML}",
            f"--workdir={tmp_path / 'x'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "--config.model.language_model_path=..." in missing.stderr


@pytest.mark.integration
def test_the_reference_yaml_trains_one_step_on_the_default_model(shared_dir, tmp_path):
    proc = _train_from_yaml(tmp_path, shared_dir / NEMO_YAML, "default")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["final_step"] == 1 and result["final"]["loss"] > 0
