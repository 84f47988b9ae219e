"""The shipped tiny random model (`--model=tiny`) copied per test, and tiny task data: what the
training tests run on (seconds, not minutes)."""

import os
import pathlib
import shutil

import jax

from ptlearn import config_lib
from ptlearn.checkpoints import tiny_model_path
from ptlearn.data import toy
from ptlearn.data.jsonl import write_jsonl

# A tiny-model subprocess spends its seconds compiling, not computing: XLA's CPU backend at its
# lowest optimisation compiles faster (the README's commands run alone, all at -O0: 335 -> 254 s
# on 2 cores). Not for the real models, whose steps then run slower (gemma3's FPB test: 94 ->
# 150 s in the full suite).
FAST_COMPILE = "--xla_backend_optimization_level=0"


def tiny_subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """os.environ for a CPU subprocess on the tiny model: `devices` simulated CPU devices,
    FAST_COMPILE, and `extra` variables."""
    flags = FAST_COMPILE
    if devices > 1:
        flags += f" --xla_force_host_platform_device_count={devices}"
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, **extra}


def write_tiny_model(folder: pathlib.Path) -> pathlib.Path:
    """A copy of the shipped tiny model (2-layer Llama, vocab 320) at `folder`."""
    shutil.copytree(tiny_model_path(), folder)
    return folder


def write_tiny_data(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """train / val / test jsonl of the synthetic sentiment task."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in toy.splits().items():
        paths[split] = folder / f"{split}.jsonl"
        write_jsonl(paths[split], records)
    return paths


def tiny_config(model: pathlib.Path, data: dict[str, pathlib.Path], style: str = "p-tuning"):
    """A training config for the tiny model: a few fast steps, validation every 2."""
    c = config_lib.base_config()
    c.model.language_model_path = str(model)
    c.model.virtual_prompt_style = style
    c.model.new_tasks = ("sentiment",)
    c.model.task_templates = (
        config_lib.task_template(
            "sentiment",
            "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            total_virtual_tokens=4,
            virtual_token_splits=(4,),
            answer_field="label",
            answer_only_loss=True,
        ),
    )
    c.model.max_seq_length = 64
    c.model.global_batch_size = 8
    c.model.micro_batch_size = 4
    c.model.p_tuning.encoder_hidden = 32
    c.model.prompt_tuning.new_prompt_init_methods = ("vocab",)
    c.model.data.train_ds = (str(data["train"]),)
    c.model.data.validation_ds = (str(data["val"]),)
    c.model.data.validation_metric_examples = 4
    c.model.optim.lr = 1e-2
    c.model.optim.sched.warmup_steps = 1
    c.trainer.max_steps = 6
    c.trainer.val_check_interval = 2
    c.trainer.log_every_n_steps = 1
    c.inference.tokens_to_generate = 3
    c.inference.batch_size = 4
    return c


def sharp_attention(params, scale=25.0):
    """Random init attends almost uniformly (positions barely matter); larger query and key
    weights make attention depend on where each token is."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: (
            x * scale if any(getattr(k, "key", "") in ("query", "key") for k in path) else x
        ),
        params,
    )
