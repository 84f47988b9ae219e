"""The frozen GPT with prompt tables written into its input: the forward shared by training,
validation, rank classification and decoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ptlearn import gpt, prompts, sharding
from ptlearn.gpt import GPT
from ptlearn.losses import token_nll


def lm_shardings(config: gpt.GPTConfig, mesh: Any, rules: Any) -> Any:
    """NamedShardings of the GPT's parameter tree (inside "params") from its logical axes."""
    boxed = jax.eval_shape(lambda: gpt.init_params(config, jax.random.key(0)))
    return sharding.logical_to_sharding(boxed, mesh, rules)["params"]


def stack_tables(tables: Mapping[str, np.ndarray], task_names: Sequence[str]) -> np.ndarray:
    """{task: [P_task, E]} -> [num_tasks, P_max, E] in `task_names` order, zero-padded."""
    longest = max(tables[t].shape[0] for t in task_names)
    width = tables[task_names[0]].shape[1]
    stacked = np.zeros((len(task_names), longest, width), np.float32)
    for i, task in enumerate(task_names):
        stacked[i, : tables[task].shape[0]] = tables[task]
    return stacked


def prompted_embeddings(
    model: GPT,
    lm_params: dict,
    tables: jax.Array,
    ids: jax.Array,
    task_id: jax.Array,
    virtual_index: jax.Array,
) -> jax.Array:
    """Token embeddings with each row's task prompt written into its virtual slots.

    ids, virtual_index: [B, T]; task_id: [B]; tables: [num_tasks, P, E] -> [B, T, E].
    """
    token_embeddings = model.apply({"params": lm_params}, ids, method=GPT.embed_tokens)
    return prompts.combine(
        token_embeddings, tables.astype(token_embeddings.dtype), task_id, virtual_index
    )


def answer_nll(
    model: GPT, lm_params: dict, tables: jax.Array, batch: Mapping[str, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """NLL of each loss target; logits are computed at those positions only, not at all T.

    batch: ids, virtual_index, positions, attention_mask [B, T]; task_id, weight [B];
    target_index, target_mask [B, K] (see batching.collate).
    Returns (nll [B, K] float32, zero where nothing counts; mask [B, K] float32).
    """
    embeddings = prompted_embeddings(
        model, lm_params, tables, batch["ids"], batch["task_id"], batch["virtual_index"]
    )
    hidden, _ = model.apply(
        {"params": lm_params},
        embeddings=embeddings,
        positions=batch["positions"],
        attention_mask=batch["attention_mask"],
        return_hidden=True,
    )
    # The token at t is predicted from the hidden state at t - 1.
    source = jnp.take_along_axis(hidden, (batch["target_index"] - 1)[..., None], axis=1)
    logits = model.apply({"params": lm_params}, source, method=GPT.logits)
    targets = jnp.take_along_axis(batch["ids"], batch["target_index"], axis=1)
    mask = batch["target_mask"] * batch["weight"][:, None]
    return token_nll(logits, targets) * mask, mask
