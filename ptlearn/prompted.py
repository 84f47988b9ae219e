"""The frozen GPT with prompt tables written into its input: the forward shared by training,
validation, rank classification and decoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
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
    """{task: [P_task, *row]} -> [num_tasks, P_max, *row] float32 in `task_names` order,
    zero-padded."""
    return prompts.pad_stack([np.asarray(tables[t], np.float32) for t in task_names])


def is_deep(tables: Any) -> bool:
    """Whether stacked tables are deep prompts' [num_tasks, P, L, 2, K, D] (not [.., P, E])."""
    return tables.ndim == 6


def prompted_inputs(
    model: GPT,
    lm_params: dict,
    tables: jax.Array,
    ids: jax.Array,
    task_id: jax.Array,
    virtual_index: jax.Array,
) -> dict[str, jax.Array]:
    """The GPT's inputs with each row's task prompt in its virtual slots (keyword arguments of
    `GPT.__call__`).

    ids, virtual_index: [B, T]; task_id: [B]. tables: [num_tasks, P, E] -> {"embeddings":
    [B, T, E]} with the prompt rows written in; or deep prompts' [num_tasks, P, L, 2, K, D]
    -> {"embeddings": the token embeddings, "kv_override": {"k", "v"}: [L, B, P, K, D] (each
    row's task table), "kv_index": virtual_index}: every layer's key and value at a virtual
    slot are its table row's, the key rotated by the slot's position like any other.
    """
    token_embeddings = model.apply({"params": lm_params}, ids, method=GPT.embed_tokens)
    if not is_deep(tables):
        embeddings = prompts.combine(
            token_embeddings, tables.astype(token_embeddings.dtype), task_id, virtual_index
        )
        return {"embeddings": embeddings}
    rows = jnp.moveaxis(tables[task_id], 2, 0)  # [L, B, P, 2, K, D]
    rows = nn.with_logical_constraint(
        rows, ("layers", "activation_batch", "prompt_tokens", "prompt_kv", "kv_heads", "head_dim")
    )
    override = {"k": rows[:, :, :, 0], "v": rows[:, :, :, 1]}
    return {"embeddings": token_embeddings, "kv_override": override, "kv_index": virtual_index}


def answer_nll(
    model: GPT, lm_params: dict, tables: jax.Array, batch: Mapping[str, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """NLL of each loss target; logits are computed at those positions only, not at all T.

    batch: ids, virtual_index, positions, attention_mask [B, T]; task_id, weight [B];
    target_index, target_mask [B, K] (see batching.collate).
    Returns (nll [B, K] float32, zero where nothing counts; mask [B, K] float32).
    """
    inputs = prompted_inputs(
        model, lm_params, tables, batch["ids"], batch["task_id"], batch["virtual_index"]
    )
    hidden, _ = model.apply(
        {"params": lm_params},
        **inputs,
        positions=batch["positions"],
        attention_mask=batch["attention_mask"],
        return_hidden=True,
    )
    mask = batch["target_mask"] * batch["weight"][:, None]
    return target_nll(model, lm_params, hidden, batch) * mask, mask


def target_nll(
    model: GPT, lm_params: dict, hidden: jax.Array, batch: Mapping[str, jax.Array]
) -> jax.Array:
    """NLL [B, K] float32 of the tokens at batch["target_index"] (ids [B, T], target_index
    [B, K]; see batching.collate) from the final hidden states [B, T, E] of those ids; logits
    only at the K positions that predict them. Unmasked: padding slots hold some value."""
    # The token at t is predicted from the hidden state at t - 1.
    source = jnp.take_along_axis(hidden, (batch["target_index"] - 1)[..., None], axis=1)
    logits = model.apply({"params": lm_params}, source, method=GPT.logits)
    targets = jnp.take_along_axis(batch["ids"], batch["target_index"], axis=1)
    return token_nll(logits, targets)
