"""Deep prompts (prefix tuning, Li & Liang 2021; P-tuning v2, Liu et al. 2022): each virtual
token carries a learned key and value at every layer of the frozen GPT, not only an input.

A task's table is [P, L, 2, K, D] (P virtual tokens, L layers, key and value, K kv heads, head
dim D); the frozen GPT takes it through its generic key/value override (`GPT.__call__` with
`kv_override` / `kv_index`, built by `prompted.prompted_inputs`), so templates are unchanged:
groups anywhere, several per template, tasks with different counts in one batch. Keys are
stored before the rotary embedding and rotated by their slot's position; in front of the text
this is exactly prefix tuning. With a projection (`model.prefix_tuning.projection`, P-tuning
v2's reparameterisation) the tables are an MLP's output over per-task learned inputs during
training, frozen to tables for serving like p-tuning's encoder.

Tables without a projection start from the frozen model's own keys and values (Li & Liang
found real words' activations train better than random ones): the model is run over the
task's initial prompt rows, made by prompt tuning's init methods (text, random, vocab, labels).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ptlearn.gpt import GPT, GPTConfig, init_cache
from ptlearn.layers import apply_rope


def row_shape(config: GPTConfig) -> tuple[int, int, int, int]:
    """(L, 2, K, D): what one virtual token holds in a deep prompt table."""
    return (config.num_layers, 2, config.num_kv_heads, config.head_dim)


@functools.partial(jax.jit, static_argnames=("config",))
def _keys_values(config: GPTConfig, lm_params: Any, embeddings: jax.Array) -> jax.Array:
    length = embeddings.shape[0]
    _, cache = GPT(config).apply(
        {"params": lm_params},
        embeddings=embeddings[None],
        cache=init_cache(config, 1, length, jnp.float32),
        cache_index=0,
        return_hidden=True,
    )
    if isinstance(cache, list):  # unrolled layers: one {"k", "v"} per layer
        cache = jax.tree.map(lambda *layers: jnp.stack(layers), *cache)
    keys, values = cache["k"][:, 0], cache["v"][:, 0]  # [L, P, K, D]
    if config.position_embedding == "rope":
        # The cache holds keys rotated by their slot; rotating back by the same angle gives
        # the pre-rotary keys the override stores.
        back = -jnp.arange(length, dtype=jnp.int32)[None]
        bases = jnp.asarray(config.layer_rope_bases, jnp.float32)
        keys = jax.vmap(lambda k, base: apply_rope(k[None], back, base)[0])(keys, bases)
    return jnp.stack([keys, values], axis=1).transpose(2, 0, 1, 3, 4)  # [P, L, 2, K, D]


def tables_from_embeddings(config: GPTConfig, lm_params: Any, embeddings: Any) -> jax.Array:
    """The frozen GPT's keys (before rotary) and values at every layer for a sequence of input
    embeddings: embeddings [P, E] -> float32 [P, L, 2, K, D] (zeros [0, L, 2, K, D] for P = 0).

    lm_params: the GPT's tree under "params". Runs on the host's default device, once per task
    at initialisation; traceable, so a plan (ptlearn.plan) can take its shape alone.
    """
    embeddings = jnp.asarray(embeddings, jnp.float32)
    if embeddings.shape[0] == 0:
        return jnp.zeros((0, *row_shape(config)), jnp.float32)
    return _keys_values(config, lm_params, embeddings).astype(jnp.float32)
