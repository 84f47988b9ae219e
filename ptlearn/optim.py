"""Optimizer and learning-rate schedule from NeMo's config names (model.optim.*).

Frozen parameters go through `optax.set_to_zero()` inside `optax.multi_transform` (`with_frozen`),
so they get neither updates nor optimizer state; `optax.masked` alone would pass their raw
updates through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ptlearn import masking
from ptlearn.config_lib import SCHEDULES
from ptlearn.errors import ConfigError

# NeMo's fused_adam / distributed_fused_adam (apex) default to adam_w_mode=True: decoupled decay.
OPTIMIZERS = {
    "adam": "adam",
    "adamw": "adamw",
    "fused_adam": "adamw",
    "distributed_fused_adam": "adamw",
}


def _warmup(step: jnp.ndarray, lr: float, warmup_steps: int) -> jnp.ndarray:
    # (step + 1): the first update already moves the parameters; lr is reached at warmup_steps-1.
    return lr * (step + 1) / max(warmup_steps, 1)


def make_schedule(
    name: str,
    lr: float,
    max_steps: int,
    warmup_steps: int = 0,
    constant_steps: int = 0,
    min_lr: float = 0.0,
) -> optax.Schedule:
    """step (int) -> learning rate (float32 scalar), jit-friendly.

    `CosineAnnealing` (model.optim.sched.name, NeMo's CosineAnnealing / Megatron's cosine):
    linear warmup to `lr` over `warmup_steps` (step s gets lr * (s+1) / warmup_steps), cosine decay from `lr` to `min_lr` over
    decay_steps = max_steps - warmup_steps - constant_steps, then `min_lr` held for the last
    `constant_steps` and beyond max_steps, as NeMo's own code does.
    `constant`: linear warmup over `warmup_steps` (if any), then `lr`.
    """
    key = {s.lower(): s for s in SCHEDULES}.get(str(name).lower())
    if key is None:
        raise ConfigError(f"model.optim.sched.name={name!r}: use one of {', '.join(SCHEDULES)}")
    if lr < 0 or min_lr < 0:
        raise ConfigError("model.optim.lr and model.optim.sched.min_lr must be >= 0")
    if warmup_steps < 0 or constant_steps < 0:
        raise ConfigError(
            "model.optim.sched.warmup_steps and model.optim.sched.constant_steps must be >= 0"
        )
    if key == "constant":

        def constant(step: Any) -> jnp.ndarray:
            step = jnp.asarray(step, jnp.float32)
            return jnp.where(step < warmup_steps, _warmup(step, lr, warmup_steps), lr)

        return constant
    if min_lr > lr:
        raise ConfigError(
            f"model.optim.sched.min_lr={min_lr} is above model.optim.lr={lr}; the cosine decays "
            "from lr down to min_lr"
        )
    decay_steps = max_steps - warmup_steps - constant_steps
    if decay_steps <= 0:
        raise ConfigError(
            f"CosineAnnealing needs trainer.max_steps ({max_steps}) > "
            f"model.optim.sched.warmup_steps ({warmup_steps}) + "
            f"model.optim.sched.constant_steps ({constant_steps})"
        )

    def cosine(step: Any) -> jnp.ndarray:
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        decayed = min_lr + (lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup_steps, _warmup(step, lr, warmup_steps), decayed)

    return cosine


def make_optimizer(
    name: str,
    lr_schedule: float | optax.Schedule,
    weight_decay: float = 0.0,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    gradient_clip_val: float | None = 0.0,
) -> optax.GradientTransformation:
    """Adam-family optimizer (model.optim.name), gradients first clipped by global norm.

    `adam`: weight_decay is L2 added to the gradient before the moments, as torch.optim.Adam.
    `adamw`: decoupled decay lr * weight_decay * param, as torch.optim.AdamW.
    `fused_adam`, `distributed_fused_adam`: NeMo's names, = adamw (apex's default mode).
    gradient_clip_val: trainer.gradient_clip_val, the max global norm; 0 or None = no clipping.
    """
    kind = OPTIMIZERS.get(str(name).lower())
    if kind is None:
        raise ConfigError(f"model.optim.name={name!r}: use one of {', '.join(OPTIMIZERS)}")
    if weight_decay < 0:
        raise ConfigError(f"model.optim.weight_decay={weight_decay} must be >= 0")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"model.optim.betas={tuple(betas)!r}: two numbers in [0, 1)")
    if eps <= 0:
        raise ConfigError(f"model.optim.eps={eps} must be > 0")
    if gradient_clip_val is not None and gradient_clip_val < 0:
        raise ConfigError(f"trainer.gradient_clip_val={gradient_clip_val} must be >= 0 (0 = off)")
    chain: list[optax.GradientTransformation] = []
    if gradient_clip_val:
        chain.append(optax.clip_by_global_norm(gradient_clip_val))
    if kind == "adam" and weight_decay:
        chain.append(optax.add_decayed_weights(weight_decay))
    chain.append(optax.scale_by_adam(b1=betas[0], b2=betas[1], eps=eps))
    if kind == "adamw" and weight_decay:
        chain.append(optax.add_decayed_weights(weight_decay))
    chain.append(optax.scale_by_learning_rate(lr_schedule))
    return optax.chain(*chain)


def with_frozen(tx: optax.GradientTransformation, labels: Any) -> optax.GradientTransformation:
    """`tx` on "trainable" leaves, `set_to_zero` (no state) on "frozen" ones.

    labels: the tree from `masking.param_labels` (or a function params -> labels).
    """
    transforms = {masking.TRAINABLE: tx, masking.FROZEN: optax.set_to_zero()}
    return optax.multi_transform(transforms, labels)


def scale_by_tree(factors: Any) -> optax.GradientTransformation:
    """Each update leaf times its constant in `factors` (a tree like the parameters, None
    where they have None): per-group learning rates after an optimizer that ends in lr."""
    return optax.stateless(lambda updates, _: jax.tree.map(lambda u, f: u * f, updates, factors))
