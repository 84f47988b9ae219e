"""Config helpers and the CLI's override forms."""

import pathlib
import subprocess
import sys

import pytest

from ptlearn import config_checks, config_lib
from ptlearn.configs import common
from ptlearn.errors import ConfigError


def test_parse_arg_types_after_defaults():
    args = config_lib.parse_arg("encoder=lstm,steps=40,fast", encoder="mlp", steps=600, fast=False)
    assert (args.encoder, args.steps, args.fast) == ("lstm", 40, True)
    with pytest.raises(ConfigError, match="'encodr' is not known"):
        config_lib.parse_arg("encodr=lstm", encoder="mlp")


def test_as_tuple_reads_single_values_and_tuple_strings():
    assert config_lib.as_tuple("a.jsonl") == ("a.jsonl",)
    assert config_lib.as_tuple("('a.jsonl', 'b.jsonl')") == ("a.jsonl", "b.jsonl")
    assert config_lib.as_tuple(("x",)) == ("x",)
    assert config_lib.as_tuple("") == ()


ARGS = config_lib.parse_arg(None, model="default", data="d", steps=10, virtual=10, seed=1234)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model.global_batch_size", 12, "not a multiple"),
        ("model.virtual_prompt_style", "lora", "virtual_prompt_style"),
        ("trainer.precision", "fp8", "trainer.precision"),
        ("model.existing_tasks", ("sentiment",), "both name|needs model.restore_path"),
        ("model.batch_chains", 3, "batch_chains=3: use 0 .auto. or a divisor"),
    ],
)
def test_validate_names_the_key(key, value, message):
    config = common.single_task_config("sentiment", "p-tuning", ARGS)
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        config_checks.validate(config)


@pytest.mark.parametrize(
    "override, missing",
    [
        ("--config.model.data.train_ds=/nonexistent/F.jsonl", "/nonexistent/F.jsonl"),
        (
            "--config.model.data.train_ds=('/nonexistent/a.jsonl', 'b.jsonl')",
            "/nonexistent/a.jsonl",
        ),
    ],
)
def test_list_keys_take_one_file_or_a_tuple(override, missing, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptlearn.train",
            "--config=configs/sentiment_ptuning.py",
            f"--workdir={tmp_path}",
            override,
            "--config.model.language_model_path=/nonexistent/model.gguf",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2
    # The data is read before the model: the error names the first training file.
    assert f"{missing}: no such file" in proc.stderr


def test_batch_chains_auto_is_two_on_cpu_unless_the_batch_is_split():
    import jax

    from ptlearn import sharding, train_setup

    m = common.single_task_config("sentiment", "p-tuning", ARGS).model
    m.micro_batch_size = 8
    one = sharding.make_mesh(1, 1, jax.devices()[:1])
    assert train_setup.batch_chains(m, one) == 2
    assert train_setup.batch_chains(m, sharding.make_mesh(1, 1, jax.devices()[:2])) == 1
    assert train_setup.batch_chains(m, sharding.make_mesh(2, 1, jax.devices()[:2])) == 2
    m.micro_batch_size = 3
    assert train_setup.batch_chains(m, one) == 1
    m.batch_chains = 3
    assert train_setup.batch_chains(m, one) == 3


@pytest.mark.parametrize(
    ("key", "value", "instead"),
    [
        ("trainer.num_nodes", 2, "distributed"),
        ("trainer.accelerator", "gpu", "JAX_PLATFORMS"),
        ("model.activations_checkpoint_method", "uniform", "activations_checkpoint_granularity"),
        ("model.activations_checkpoint_num_layers", 4, "activations_checkpoint_granularity"),
        ("model.data.num_workers", 8, "no loader workers"),
    ],
)
def test_nemo_keys_ptlearn_does_not_implement_are_refused_unless_default(key, value, instead):
    config = config_lib.base_config()
    config.update_from_flattened_dict({key: value})
    with pytest.raises(ConfigError, match=rf"{key}={value!r}: a NeMo setting .*{instead}"):
        config_checks.validate(config)


def test_an_unknown_schedule_is_refused_by_validate_as_optim_reads_names():
    config = common.single_task_config("sentiment", "p-tuning", ARGS)
    config.model.optim.sched.name = "CONSTANT"  # optim reads the names case-blind
    config_checks.validate(config)
    config.model.optim.sched.name = "cosine"
    with pytest.raises(ConfigError, match="sched.name='cosine': use one of CosineAnnealing, const"):
        config_checks.validate(config)


def test_the_multitask_recipe_is_the_three_recipes_each_with_its_examples():
    recipes = [
        config_lib.load_config(n, "model=tiny") for n in ("sentiment", "squad", "intent_slot")
    ]
    merged = config_lib.load_config("multitask", "model=tiny,batch=16")
    m = merged.model
    assert m.new_tasks == ("sentiment", "squad", "intent_and_slot")
    assert [t.prompt_template for t in m.task_templates] == [
        r.model.task_templates[0].prompt_template for r in recipes
    ]
    examples = [r.trainer.max_steps * r.model.global_batch_size for r in recipes]
    assert m.data.train_task_weights == tuple(examples)
    assert merged.trainer.max_steps == round(sum(examples) / 16)
    assert m.prompt_tuning.new_prompt_init_text == tuple(
        r.model.prompt_tuning.new_prompt_init_text[0] for r in recipes
    )
    config_checks.validate(merged)


def test_the_multitask_recipe_scales_each_tasks_lr_by_its_rows_per_batch():
    recipes = [
        config_lib.load_config(n, "model=tiny") for n in ("sentiment", "squad", "intent_slot")
    ]
    merged = config_lib.load_config("multitask", "model=tiny,batch=16")
    # Each task's rows per mixed batch over its recipe's batch: its recipe's steps over the
    # merged run's when the merge keeps every recipe's examples.
    expected = [r.trainer.max_steps / merged.trainer.max_steps for r in recipes]
    assert merged.model.optim.task_lr_scales == pytest.approx(expected, rel=1e-3)
    assert merged.model.optim.lr == 3e-2
    config_checks.validate(merged)
    assert config_lib.load_config("multitask", "scale_lr=0").model.optim.task_lr_scales == ()


def test_merging_configs_that_differ_in_a_shared_key_names_it():
    a = config_lib.load_config("sentiment", "model=tiny")
    b = config_lib.load_config("squad", "model=tiny,projection=1")
    with pytest.raises(ConfigError, match="model.prefix_tuning.projection: the merged configs"):
        common.merged_config([a, b], lr=1e-3, batch=8)
