"""The README's commands, the experiment scripts and the configs are exercised, so they cannot
drift from the code."""

import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import pytest
from tiny_model import tiny_subprocess_env, write_tiny_model

from ptlearn import config_checks, config_lib, templates

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    setup, _, pytest_command = test_command.rpartition(" && ")
    for step in setup.split(" && "):
        if step.startswith(".venv/bin/pip"):
            assert step.replace("pip install ", "pip install -q ") in ci
    assert f"\n{pytest_command}\n" in ci


def test_readme_main_job_is_the_fpb_script():
    main_job = _readme_commands()[0]
    assert main_job.endswith("bash experiments/fpb_sentiment.sh ../shared/data")


@pytest.mark.parametrize(
    "path", sorted(config_lib.shipped_configs().values()), ids=lambda p: p.stem
)
def test_every_config_loads_and_validates(path, shared_dir):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if path.stem == "nemo":  # a yaml's ??? keys come from the command line
        yaml = shared_dir / "reference/nemo/megatron_gpt_prompt_learning_intent_n_slot.yaml"
        config = module.get_config(f"yaml={yaml}")
        assert config_lib.required_keys(config) == [
            "model.data.train_ds",
            "model.data.validation_ds",
            "model.language_model_path",
        ]
        config.update_from_flattened_dict(
            {
                "model.language_model_path": "tiny",
                "model.data.train_ds": ("t.jsonl",),
                "model.data.validation_ds": ("v.jsonl",),
            }
        )
    else:
        config = module.get_config()
    config_checks.validate(config)
    parsed = templates.parse_task_templates(config.model.task_templates)
    assert set(config.model.new_tasks) <= set(parsed)
    assert module.__doc__ and "python -m ptlearn.train" in module.__doc__


def test_main_job_script_end_to_end_on_a_tiny_model(shared_dir, tmp_path):
    model = write_tiny_model(tmp_path / "model")
    env = tiny_subprocess_env(
        PYTHON=sys.executable, DATA_DIR=str(tmp_path / "fpb"), WORKDIR=str(tmp_path / "run")
    )
    flags = [
        f"--config.model.language_model_path={model}",
        "--config.trainer.max_steps=3",
        "--config.trainer.val_check_interval=3",
        "--config.trainer.limit_val_batches=2",
        "--config.model.optim.sched.warmup_steps=1",
        "--config.model.data.validation_metric_examples=4",
    ]
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments" / "fpb_sentiment.sh"), str(shared_dir / "data"), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == result["n_predictions"] > 100
    assert 0.0 <= result["accuracy"] <= 1.0
    assert 0 < result["train_wall_time_s"] <= result["wall_time_s"]
    lines = (tmp_path / "run" / "test_predictions.txt").read_text().splitlines()
    assert len(lines) == result["n"]
