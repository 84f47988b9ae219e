"""Serving's per-task prefix KV caches: the tokens every request of a task shares (its virtual
prompt and the template text around it) are run once and reused by all its requests.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ptlearn import encoding, prompted
from ptlearn.generate import prefix_cache
from ptlearn.gpt import GPT, cache_length

# Prefix KV caches a PromptedLM keeps (one per task and distinct prefix; ~0.5 MB each for the
# default model's 10 virtual tokens).
MAX_PREFIX_CACHES = 256


@functools.partial(jax.jit, static_argnames=("config",))
def prompted_inputs(config, lm_params, tables, ids, task_id, virtual_index):
    return prompted.prompted_inputs(GPT(config), lm_params, tables, ids, task_id, virtual_index)


def shared_prefix_length(examples: Sequence[encoding.EncodedExample]) -> int:
    """Leading tokens that all `examples` share, cut back to end at their last virtual token
    (the task's virtual prompt and the template text around it; 0 when none is shared).
    At least one token of every example is left after the prefix."""
    limit = min(len(e.ids) for e in examples) - 1
    first = examples[0]
    same = np.ones(limit, bool)
    for e in examples[1:]:
        same &= (e.ids[:limit] == first.ids[:limit]) & (
            e.virtual_index[:limit] == first.virtual_index[:limit]
        )
    shared = limit if same.all() else int(np.argmin(same))
    virtual = np.flatnonzero(first.virtual_index[:shared] >= 0)
    return int(virtual[-1]) + 1 if virtual.size else 0


def _prefix_cache_of(lm: Any, example: encoding.EncodedExample, length: int) -> Any:
    """The KV cache [.., 1, length, K, D] of the example's first `length` tokens, computed
    once per task and prefix and kept on `lm` for later requests."""
    ids, virtual_index = example.ids[:length], example.virtual_index[:length]
    key = (example.taskname, ids.tobytes(), virtual_index.tobytes())
    if key not in lm.prefix_caches:
        if len(lm.prefix_caches) >= MAX_PREFIX_CACHES:  # a long-lived server: drop the oldest
            lm.prefix_caches.pop(next(iter(lm.prefix_caches)))
        task_id = np.asarray([lm.task_index[example.taskname]], np.int32)
        lm.prefix_caches[key] = run_prefixes(
            lm, ids[None], task_id, virtual_index[None], np.asarray([length], np.int32)
        )
    return lm.prefix_caches[key]


def run_prefixes(
    lm: Any,
    ids: np.ndarray,
    task_id: np.ndarray,
    virtual_index: np.ndarray,
    lengths: np.ndarray,
) -> Any:
    """The KV caches [.., R, P, K, D] of R prompt prefixes with their tasks' tables: ids,
    virtual_index [R, P] int32, row r right-padded after lengths[r] (int32 [R]) tokens;
    task_id [R] int32 (rows of lm.tables)."""
    inputs = prompted_inputs(lm.config, lm.lm_params, lm.tables, ids, task_id, virtual_index)
    return prefix_cache(
        {"params": lm.lm_params},
        inputs["embeddings"],
        lengths,
        inputs.get("kv_override"),
        inputs.get("kv_index"),
        config=lm.config,
    )


def split_prefixes(
    lm: Any, examples: Sequence[encoding.EncodedExample]
) -> tuple[list[encoding.EncodedExample], np.ndarray, np.ndarray, Any]:
    """Cuts each task's shared virtual-prompt prefix off its examples.

    Returns (the examples without their prefix; per example the prefix length and its row in
    the prefix cache, int32 [n]; the prefix caches of the tasks [.., R, P_max, K, D], or None
    when no task shares a prefix).
    """
    by_task: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_task.setdefault(e.taskname, []).append(i)
    caches, lengths, rows = [], np.zeros(len(examples), np.int32), np.zeros(len(examples), np.int32)
    cut = list(examples)
    for indices in by_task.values():
        length = shared_prefix_length([examples[i] for i in indices])
        if not length:
            continue
        caches.append(_prefix_cache_of(lm, examples[indices[0]], length))
        lengths[indices], rows[indices] = length, len(caches) - 1
        for i in indices:
            cut[i] = encoding.slice_example(examples[i], length)
    if not caches:
        return cut, lengths, rows, None
    longest = max(cache_length(c) for c in caches)

    def stack(*leaves: jax.Array) -> jax.Array:
        padded = [
            jnp.pad(a, [(0, 0)] * (a.ndim - 3) + [(0, longest - a.shape[-3]), (0, 0), (0, 0)])
            for a in leaves
        ]
        return jnp.concatenate(padded, axis=padded[0].ndim - 4)

    return cut, lengths, rows, jax.tree.map(stack, *caches)
