"""The frozen GPT with prompt tables written into its input: the forward shared by training,
validation, rank classification and decoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from ptlearn import prompts
from ptlearn.gpt import GPT
from ptlearn.losses import token_nll


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
    """Per-token NLL where the loss counts.

    batch: ids, virtual_index, loss_mask, positions, attention_mask [B, T]; task_id, weight [B].
    Returns (nll [B, T-1] float32, zero where the loss does not count; mask [B, T-1] float32).
    """
    embeddings = prompted_embeddings(
        model, lm_params, tables, batch["ids"], batch["task_id"], batch["virtual_index"]
    )
    logits, _ = model.apply(
        {"params": lm_params},
        embeddings=embeddings[:, :-1],
        positions=batch["positions"][:, :-1],
        attention_mask=batch["attention_mask"][:, :-1],
    )
    mask = batch["loss_mask"][:, 1:] * batch["weight"][:, None]
    nll = token_nll(logits, batch["ids"][:, 1:]) * mask
    return nll, mask
