"""Config validation: the checks no type check catches (SPEC section 4), each raising one
ConfigError that names the key and what to give instead. `config_lib` owns the tree, its
defaults and the names a key may take; this module owns the limits and the NeMo keys it
refuses.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from ptlearn.config_lib import (
    AUTO,
    SCHEDULES,
    VALIDATION_ANSWERS,
    VIRTUAL_PROMPT_STYLES,
    as_tuple,
    base_config,
    dtypes_of_precision,
    required_keys,
)
from ptlearn.errors import ConfigError

# Above this Adam's steps (about lr per value) dwarf any prompt value: only divergence follows.
MAX_LR = 1.0

_REMAT = "use model.activations_checkpoint_granularity=full or selective (every block)"
# NeMo keys kept so NeMo users find them (SPEC 4) that ptlearn does not implement: their
# base_config() default is accepted, any other value is refused with what to use instead.
UNIMPLEMENTED: dict[str, str] = {
    "trainer.num_nodes": (
        "hosts join through distributed.* (coordinator_address, num_processes, process_id)"
    ),
    "trainer.accelerator": (
        "JAX runs on the devices it finds; choose them with JAX_PLATFORMS (cpu, cuda, tpu) "
        "and trainer.devices"
    ),
    "model.activations_checkpoint_method": _REMAT,
    "model.activations_checkpoint_num_layers": _REMAT,
    "model.data.num_workers": (
        "examples are encoded in memory before the first step; there are no loader workers"
    ),
}


def _value(config: ml_collections.ConfigDict, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def _check_unimplemented(config: ml_collections.ConfigDict) -> None:
    defaults = base_config()
    for key, instead in UNIMPLEMENTED.items():
        value = _value(config, key)
        if value != _value(defaults, key):
            raise ConfigError(
                f"{key}={value!r}: a NeMo setting ptlearn does not implement; {instead}"
            )


def _is_weight(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks values that no type check catches; raises ConfigError naming the key."""
    missing = required_keys(config)
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: required (??? in the yaml); give "
            + " ".join(f"--config.{k}=..." for k in missing)
        )
    _check_unimplemented(config)
    m = config.model
    if m.virtual_prompt_style not in VIRTUAL_PROMPT_STYLES:
        raise ConfigError(
            f"model.virtual_prompt_style={m.virtual_prompt_style!r}: use one of "
            f"{', '.join(VIRTUAL_PROMPT_STYLES)}"
        )
    if m.pipeline_model_parallel_size != 1:
        raise ConfigError(
            f"model.pipeline_model_parallel_size={m.pipeline_model_parallel_size}: pipeline "
            "parallelism is not supported yet; use fsdp (mesh) or tensor parallelism instead"
        )
    if m.tensor_model_parallel_size < 1:
        raise ConfigError("model.tensor_model_parallel_size must be >= 1")
    if m.micro_batch_size < 1 or m.global_batch_size < 1:
        raise ConfigError("model.global_batch_size and model.micro_batch_size must be >= 1")
    if m.global_batch_size % m.micro_batch_size:
        raise ConfigError(
            f"model.global_batch_size={m.global_batch_size} is not a multiple of "
            f"model.micro_batch_size={m.micro_batch_size}"
        )
    if config.trainer.precision != AUTO:
        dtypes_of_precision(config.trainer.precision)
    if m.batch_chains < 0 or (m.batch_chains and m.micro_batch_size % m.batch_chains):
        raise ConfigError(
            f"model.batch_chains={m.batch_chains}: use 0 (auto) or a divisor of "
            f"model.micro_batch_size={m.micro_batch_size}"
        )
    if str(m.optim.sched.name).lower() not in {s.lower() for s in SCHEDULES}:  # as optim reads it
        raise ConfigError(
            f"model.optim.sched.name={m.optim.sched.name!r}: use one of {', '.join(SCHEDULES)}"
        )
    if m.data.validation_answers not in VALIDATION_ANSWERS:
        raise ConfigError(
            f"model.data.validation_answers={m.data.validation_answers!r}: use one of "
            f"{', '.join(VALIDATION_ANSWERS)}"
        )
    if config.trainer.max_steps < 0 and config.trainer.max_epochs <= 0:
        raise ConfigError("set trainer.max_steps (>= 0) or trainer.max_epochs (> 0)")
    if config.trainer.val_check_epochs < 0:
        raise ConfigError("trainer.val_check_epochs must be >= 0 (0: use val_check_interval)")
    if config.trainer.val_check_interval < 1 or config.trainer.log_every_n_steps < 1:
        raise ConfigError("trainer.val_check_interval and trainer.log_every_n_steps must be >= 1")
    for key in ("limit_val_batches", "limit_test_batches"):
        if config.trainer[key] < 0:
            raise ConfigError(f"trainer.{key} must be >= 0 (0: all batches)")
    monitor = config.exp_manager.checkpoint_callback_params
    if monitor.mode not in ("min", "max"):
        raise ConfigError("exp_manager.checkpoint_callback_params.mode must be 'min' or 'max'")
    if monitor.save_top_k < 1:
        raise ConfigError("exp_manager.checkpoint_callback_params.save_top_k must be >= 1")
    if not as_tuple(m.new_tasks) and m.virtual_prompt_style != "inference":
        raise ConfigError("model.new_tasks is empty: name the task(s) to train")
    overlap = set(as_tuple(m.new_tasks)) & set(as_tuple(m.existing_tasks))
    if overlap:
        raise ConfigError(
            f"model.new_tasks and model.existing_tasks both name {sorted(overlap)}; a task is "
            "either trained anew or kept from restore_path"
        )
    weights = as_tuple(m.data.train_task_weights)
    if weights and (
        len(weights) != len(as_tuple(m.new_tasks))
        or not all(_is_weight(w) for w in weights)
        or not sum(weights) > 0
    ):
        raise ConfigError(
            f"model.data.train_task_weights={weights!r}: give one weight >= 0 per task of "
            f"model.new_tasks {as_tuple(m.new_tasks)!r} (some > 0), or () for each task by "
            "its example count"
        )
    scales = as_tuple(m.optim.task_lr_scales)
    if scales and (
        len(scales) != len(as_tuple(m.new_tasks))
        or not all(_is_weight(x) and x > 0 for x in scales)
    ):
        raise ConfigError(
            f"model.optim.task_lr_scales={scales!r}: give one finite factor > 0 per task of "
            f"model.new_tasks {as_tuple(m.new_tasks)!r}, or () for model.optim.lr everywhere"
        )
    if as_tuple(m.existing_tasks) and not m.restore_path:
        raise ConfigError(
            "model.existing_tasks needs model.restore_path: the prompt model that holds them"
        )
    finite = {
        "model.optim.lr": m.optim.lr,
        "model.optim.weight_decay": m.optim.weight_decay,
        "model.optim.eps": m.optim.eps,
        "model.optim.sched.min_lr": m.optim.sched.min_lr,
        "trainer.gradient_clip_val": config.trainer.gradient_clip_val,
        "inference.temperature": config.inference.temperature,
        "inference.top_p": config.inference.top_p,
        **{f"model.optim.betas[{i}]": b for i, b in enumerate(as_tuple(m.optim.betas))},
    }
    for key, value in finite.items():
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: give a finite number")
    for key in ("lr", "weight_decay"):
        if m.optim[key] < 0:
            raise ConfigError(f"model.optim.{key} must be >= 0")
    generate = config.inference.tokens_to_generate
    if not 1 <= generate <= m.max_seq_length:
        raise ConfigError(
            f"inference.tokens_to_generate={generate}: must be within 1 and the context, "
            f"model.max_seq_length={m.max_seq_length}"
        )
    if m.optim.lr > MAX_LR:
        raise ConfigError(
            f"model.optim.lr={m.optim.lr}: Adam moves every prompt value by about lr a step and "
            f"prompt values are of order 0.01 to 1, so a run this fast only diverges; use lr "
            f"<= {MAX_LR} (prompt learning uses 1e-4 to 3e-2)"
        )
    if scales and m.optim.lr * max(scales) > MAX_LR:
        raise ConfigError(
            f"model.optim.task_lr_scales={scales!r} take model.optim.lr={m.optim.lr} above "
            f"{MAX_LR} for a task, where a run only diverges; lower the largest factor"
        )
