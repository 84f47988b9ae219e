"""The train state at step 0: which parameters train (freeze rules), the optimizer and its
schedule, and every array placed on the mesh with its sharding (training.py runs the loop).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ptlearn import config_lib, gpt, masking, optim, prompted, sharding
from ptlearn.errors import ConfigError
from ptlearn.train_setup import Setup, init_prompt_params


def freeze_rules(s: Setup) -> list[tuple[str, str]]:
    """Existing tasks' tables frozen first, then the configured rules (first match wins)."""
    rules = [(f"prompt/tables/{task}", "frozen") for task in s.existing_tasks]
    return rules + [tuple(rule) for rule in s.config.model.freeze_rules]


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int, labels: Any):
    """The optimizer (with set_to_zero for frozen labels) and its learning-rate schedule."""
    o = config.model.optim
    if total_steps == 0:  # nothing trains (zero-shot / in-context runs): any valid schedule
        total_steps = o.sched.warmup_steps + o.sched.constant_steps + 1
    schedule = optim.make_schedule(
        o.sched.name,
        lr=o.lr,
        max_steps=total_steps,
        warmup_steps=o.sched.warmup_steps,
        constant_steps=o.sched.constant_steps,
        min_lr=o.sched.min_lr,
    )
    tx = optim.make_optimizer(
        o.name,
        schedule,
        weight_decay=o.weight_decay,
        betas=tuple(o.betas),
        eps=o.eps,
        gradient_clip_val=config.trainer.gradient_clip_val,
    )
    tx = optim.with_frozen(tx, labels)
    scales = config_lib.as_tuple(o.task_lr_scales)
    if scales:
        tx = optax.chain(tx, optim.scale_by_tree(_task_factors(labels, config, scales)))
    return tx, schedule


def _task_factors(labels: Any, config: ml_collections.ConfigDict, scales: tuple) -> Any:
    """A tree like `labels`: each new task's own prompt leaves (prompt/tables/<task>,
    prompt/inputs/<task>) its factor of model.optim.task_lr_scales, any other leaf 1."""
    by_task = dict(zip(config_lib.as_tuple(config.model.new_tasks), scales, strict=True))

    def factor(path: Any, _: Any) -> float:
        parts = masking.path_str(path).split("/")
        own = len(parts) >= 3 and parts[0] == "prompt" and parts[1] in ("tables", "inputs")
        return float(by_task.get(parts[2], 1.0)) if own else 1.0

    return jax.tree_util.tree_map_with_path(factor, labels)


def optimizer_shardings(tx: Any, trainable: Any, param_shardings: Any, replicated: Any) -> Any:
    """The optimizer state's shardings: each moment like its parameter, counters replicated.
    `trainable` may be arrays or ShapeDtypeStructs (only shapes are read)."""
    return optax.tree_map_params(
        tx,
        lambda _, sharding_of_param: sharding_of_param,
        jax.eval_shape(tx.init, trainable),
        param_shardings,
        transform_non_params=lambda _: replicated,
    )


def init_state(s: Setup, steps: int) -> tuple[dict, Any, optax.GradientTransformation, Any]:
    """(train state, frozen partition, optimizer, lr schedule) at step 0, placed on the mesh.

    The state holds only what trains (trainable prompt leaves, their optimizer state, step,
    data position, RNG); the frozen partition (the LM, restored tasks' tables) is built from
    the base model and restore_path, never checkpointed and never handed to the optimizer.
    Shardings come from the parameters' logical axes: the LM Megatron-style over the model
    axis, prompts replicated (tpmlp's hidden split), the optimizer state like its parameters.
    The first call places the base model's weights on the mesh and drops their host copy
    (`s.loaded.params`); later calls share the placed copy, so a Setup serves several runs.
    """
    init_rng, state_rng = jax.random.split(jax.random.key(s.config.model.seed))
    boxed_prompt = init_prompt_params(s, init_rng)
    prompt_shardings = sharding.logical_to_sharding(boxed_prompt, s.mesh, s.rules)
    lm_shardings = prompted.lm_shardings(s.model.config, s.mesh, s.rules)
    if s.lm_on_mesh is None:
        dtype = s.model.config.param_dtype
        host = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype), s.loaded.params)
        s.lm_on_mesh = jax.device_put(gpt.pack_params(host), lm_shardings)
        # The mesh copy is the model from here on (frozen["lm"]); the host copy would double it.
        s.loaded.params = None
    params = {
        "lm": s.lm_on_mesh,
        "prompt": jax.device_put(
            jax.tree_util.tree_map(np.asarray, nn.meta.unbox(boxed_prompt)), prompt_shardings
        ),
    }
    shardings = {"lm": lm_shardings, "prompt": prompt_shardings}
    labels = masking.param_labels(params, freeze_rules(s))
    trainable, frozen = masking.split(params, labels)
    if any(leaf is not None for leaf in jax.tree_util.tree_leaves(trainable["lm"])):
        raise ConfigError(
            "model.freeze_rules make language-model weights trainable; only prompt parameters "
            "train in ptlearn"
        )
    trainable_labels, _ = masking.split(labels, labels)
    trainable_shardings, _ = masking.split(shardings, labels)
    tx, schedule = make_optimizer(s.config, steps, trainable_labels)
    replicated = NamedSharding(s.mesh, PartitionSpec())
    opt_shardings = optimizer_shardings(tx, trainable, trainable_shardings, replicated)
    scalars = {
        "step": np.int32(0),
        "rng": np.asarray(jax.random.key_data(state_rng)),
        "epoch": np.int32(0),
        "batch_in_epoch": np.int32(0),
    }
    state = {
        "trainable": trainable,
        "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(trainable),
        **jax.device_put(scalars, replicated),
    }
    return state, frozen, tx, schedule
