"""Schedules, optimizers, clipping, and no optimizer state for frozen parameters."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptlearn import config_checks, config_lib, masking, optim, train_state
from ptlearn.errors import ConfigError


def _lr(schedule, step: int) -> float:
    return float(jax.jit(schedule)(jnp.asarray(step)))


def test_cosine_annealing_key_steps():
    lr, min_lr = 1e-3, 1e-5
    s = optim.make_schedule(
        "CosineAnnealing", lr, max_steps=100, warmup_steps=10, constant_steps=20, min_lr=min_lr
    )
    decay_end = 100 - 20  # decay over steps 10..80, min_lr held for the last 20
    assert _lr(s, 0) == pytest.approx(lr / 10)  # the first step already updates
    assert _lr(s, 4) == pytest.approx(lr / 2)
    assert _lr(s, 9) == pytest.approx(lr)
    assert _lr(s, 10) == pytest.approx(lr)  # warmup end
    assert _lr(s, 45) == pytest.approx((lr + min_lr) / 2)  # mid-cosine
    assert _lr(s, 27) == pytest.approx(
        min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * 17 / 70))
    )
    assert _lr(s, decay_end) == pytest.approx(min_lr)
    assert _lr(s, 90) == pytest.approx(min_lr)  # constant phase
    assert _lr(s, 100) == pytest.approx(min_lr)  # max_steps
    assert _lr(s, 1000) == pytest.approx(min_lr)  # beyond
    # Monotone non-increasing after warmup.
    values = [_lr(s, i) for i in range(10, 101)]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:], strict=False))


def test_cosine_without_warmup_or_constant_and_case_insensitive_name():
    s = optim.make_schedule("cosineannealing", 2.0, max_steps=10, min_lr=0.0)
    assert _lr(s, 0) == pytest.approx(2.0)
    assert _lr(s, 5) == pytest.approx(1.0)
    assert _lr(s, 10) == pytest.approx(0.0, abs=1e-7)


def test_constant_schedule_with_warmup():
    s = optim.make_schedule("constant", 0.1, max_steps=-1, warmup_steps=4)
    assert [_lr(s, i) for i in (0, 1, 3, 4, 1000)] == pytest.approx([0.025, 0.05, 0.1, 0.1, 0.1])
    assert _lr(optim.make_schedule("constant", 0.1, max_steps=-1), 0) == pytest.approx(0.1)


def test_schedule_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.optim.sched.name='linear'"):
        optim.make_schedule("linear", 1e-3, 100)
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        optim.make_schedule("CosineAnnealing", 1e-3, 100, warmup_steps=60, constant_steps=40)
    with pytest.raises(ConfigError, match="min_lr"):
        optim.make_schedule("CosineAnnealing", 1e-3, 100, min_lr=1e-2)


def test_optimizer_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.optim.name='sgd'"):
        optim.make_optimizer("sgd", 1e-3)
    with pytest.raises(ConfigError, match="model.optim.betas"):
        optim.make_optimizer("adam", 1e-3, betas=(0.9,))
    with pytest.raises(ConfigError, match="trainer.gradient_clip_val"):
        optim.make_optimizer("adam", 1e-3, gradient_clip_val=-1.0)


def _one_update(tx, params, grads):
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    return updates


def test_adam_and_adamw_match_optax_and_aliases():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, 0.1, -0.3])}
    kw = dict(weight_decay=0.1, betas=(0.9, 0.95), eps=1e-6)
    adamw = _one_update(optim.make_optimizer("adamw", 0.01, **kw), params, grads)
    expected = _one_update(optax.adamw(0.01, 0.9, 0.95, 1e-6, weight_decay=0.1), params, grads)
    np.testing.assert_allclose(adamw["w"], expected["w"], rtol=1e-6)
    for alias in ("fused_adam", "distributed_fused_adam"):
        same = _one_update(optim.make_optimizer(alias, 0.01, **kw), params, grads)
        np.testing.assert_array_equal(same["w"], adamw["w"])
    # adam: L2 enters the gradient before the moments (torch.optim.Adam).
    adam = _one_update(optim.make_optimizer("adam", 0.01, **kw), params, grads)
    l2_grads = {"w": grads["w"] + 0.1 * params["w"]}
    expected = _one_update(optax.adam(0.01, 0.9, 0.95, 1e-6), params, l2_grads)
    np.testing.assert_allclose(adam["w"], expected["w"], rtol=1e-6)


def test_gradient_clipping_by_global_norm():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([0.0, 4.0])}  # global norm 5

    def first_moment(gradient_clip_val):
        tx = optim.make_optimizer("adam", 1.0, gradient_clip_val=gradient_clip_val)
        _, state = tx.update(grads, tx.init(params), params)
        return next(s for s in jax.tree.leaves(state, is_leaf=_is_adam) if _is_adam(s)).mu

    # The first moment after one step is (1 - b1) times the (clipped) gradient.
    clipped = first_moment(1.0)
    np.testing.assert_allclose(clipped["a"], 0.1 * grads["a"] / 5, rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], 0.1 * grads["b"] / 5, rtol=1e-6)
    np.testing.assert_allclose(first_moment(0.0)["b"], 0.1 * grads["b"], rtol=1e-6)
    np.testing.assert_allclose(first_moment(10.0)["b"], 0.1 * grads["b"], rtol=1e-6)


def _is_adam(x) -> bool:
    return isinstance(x, optax.ScaleByAdamState)


def test_with_frozen_holds_no_moments_for_frozen_leaves():
    params = {"lm": {"w": jnp.ones((100, 10))}, "prompt": {"tables": {"t": jnp.ones((3, 10))}}}
    labels = masking.param_labels(params, masking.PROMPT_ONLY_RULES)
    tx = optim.with_frozen(
        optim.make_optimizer("adamw", optim.make_schedule("constant", 0.1, -1), 0.01), labels
    )
    state = jax.jit(tx.init)(params)
    sizes = [x.size for x in jax.tree.leaves(state)]
    assert sum(s for s in sizes if s > 1) == 2 * 30  # mu and nu of the prompt table only
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    assert float(jnp.max(jnp.abs(updates["lm"]["w"]))) == 0.0
    assert float(jnp.min(jnp.abs(updates["prompt"]["tables"]["t"]))) > 0.0


def test_task_lr_scales_scale_each_new_tasks_own_updates_only():
    config = config_lib.load_config("multitask_ptuning", "model=tiny")
    config.model.optim.sched.name = "constant"
    params = {
        "lm": {"w": jnp.ones((4, 2))},
        "prompt": {
            "inputs": {t: jnp.ones((3, 2)) for t in config.model.new_tasks},
            "encoder": {"kernel": jnp.ones((2, 2))},
        },
    }
    labels = masking.param_labels(params, masking.PROMPT_ONLY_RULES)
    trainable_labels, _ = masking.split(labels, labels)  # as train_state.init_state does
    trainable, _ = masking.split(params, trainable_labels)
    grads = jax.tree.map(lambda x: x * 0.5, trainable)

    def updates_with(scales):
        config.model.optim.task_lr_scales = scales
        tx, _ = train_state.make_optimizer(config, 10, trainable_labels)
        return _one_update(tx, trainable, grads)["prompt"]

    plain, scaled = updates_with(()), updates_with((0.25, 1.0, 2.0))
    for task, factor in zip(config.model.new_tasks, (0.25, 1.0, 2.0), strict=True):
        np.testing.assert_allclose(scaled["inputs"][task], factor * plain["inputs"][task])
    np.testing.assert_array_equal(scaled["encoder"]["kernel"], plain["encoder"]["kernel"])


@pytest.mark.parametrize(
    ("scales", "match"),
    [
        ((1.0,), "one finite factor > 0 per task"),
        ((1.0, 0.0, 1.0), "one finite factor"),
        ((1.0, float("nan"), 1.0), "one finite factor"),
        ((1.0, 2e3, 1.0), "above 1.0 for a task"),
    ],
)
def test_bad_task_lr_scales_name_the_key(scales, match):
    config = config_lib.load_config("multitask_ptuning", "model=tiny")
    config.model.optim.task_lr_scales = scales
    with pytest.raises(ConfigError, match=rf"model.optim.task_lr_scales=.*{match}"):
        config_checks.validate(config)
