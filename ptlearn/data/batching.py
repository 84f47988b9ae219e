"""Batches of encoded examples: length buckets, deterministic epochs, resumable positions.

A training epoch's batch order is a pure function of (seed, epoch), so resuming only needs the
epoch and the index of the next batch. Within an epoch, examples are shuffled, grouped into
windows of a few dozen batches, and sorted by length inside each window, so a batch holds
examples of similar length (little padding) while the batch order stays random.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]

SORT_WINDOW_BATCHES = 32


def bucket_length(length: int, max_length: int) -> int:
    """Pads `length` up to few distinct values (multiples of 16, then of 64), at most max_length."""
    step = 16 if length <= 256 else 64
    return min(-(-length // step) * step, max_length)


def length_chunks(
    lengths: Sequence[int], batch_size: int, max_length: int
) -> list[tuple[slice, int]]:
    """Batches over items sorted by length (ascending `lengths`), for scoring: a batch has
    batch_size rows, halved (to a power-of-two fraction) while its padded tokens, rows x the
    bucket of its longest, exceed batch_size rows of the median length's bucket. A long tail
    then is not padded alongside short rows, and each length bucket keeps one or two row
    counts (few compiled shapes). Returns (slice into the sorted items, rows to collate it
    to), in order."""
    budget = batch_size * bucket_length(int(np.median(lengths)), max_length) if lengths else 0
    chunks, start = [], 0
    while start < len(lengths):
        rows = batch_size
        while (
            rows > 1
            and rows * bucket_length(lengths[min(start + rows, len(lengths)) - 1], max_length)
            > budget
        ):
            rows //= 2
        chunks.append((slice(start, start + rows), rows))
        start += rows
    return chunks


def mixture_pool(
    task_of: Sequence[int], weights: Sequence[float], *, seed: int, epoch: int
) -> np.ndarray:
    """The example indices of one epoch of a task mixture: as many places as examples (N),
    task t filling its share weights[t] / sum(weights) of them (largest remainders round).

    task_of: [N] task number of each example (0 <= t < len(weights)). A task with fewer
    examples than places repeats them, each pass a fresh permutation, so every example comes
    before any comes twice; a task with more gets a different subset each epoch. Returns [N]
    indices, grouped by task (epoch_batches shuffles them). Same (seed, epoch) -> same pool.
    """
    task_of = np.asarray(task_of)
    count = len(task_of)
    shares = np.asarray(weights, np.float64) / float(np.sum(weights))
    quotas = np.floor(shares * count).astype(int)
    remainders = shares * count - quotas
    for t in np.argsort(-remainders, kind="stable")[: count - int(quotas.sum())]:
        quotas[t] += 1
    pool = []
    for t, quota in enumerate(quotas):
        members = np.flatnonzero(task_of == t)
        if quota == 0:
            continue
        if len(members) == 0:
            raise ValueError(f"task {t} has weight {weights[t]} but no examples")
        rng = np.random.default_rng([seed, epoch, 2, t])
        passes = -(-quota // len(members))
        pool.append(np.concatenate([rng.permutation(members) for _ in range(passes)])[:quota])
    return np.concatenate(pool)


def epoch_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = True,
    pool: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The example indices of each batch of one epoch, in order.

    lengths: [N] token counts. pool: the epoch's [P] example indices (mixture_pool; repeats
    allowed), or None for every example once. Returns a list of [batch_size] int arrays (the
    last one shorter when drop_last is False). Same (seed, epoch) -> same batches.
    """
    lengths = np.asarray(lengths)
    if pool is None:
        pool = np.arange(len(lengths))
    count = len(pool)
    if not shuffle:
        order = pool
    else:
        rng = np.random.default_rng([seed, epoch])
        order = pool[rng.permutation(count)]
        window = batch_size * SORT_WINDOW_BATCHES
        chunks = [order[i : i + window] for i in range(0, count, window)]
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
    batches = [order[i : i + batch_size] for i in range(0, count, batch_size)]
    if batches and len(batches[-1]) < batch_size and drop_last:
        batches.pop()
    if shuffle:
        batches = [
            batches[i] for i in np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
        ]
    return batches


def batch_shape(examples: Sequence[Any], max_length: int) -> tuple[int, int]:
    """(T, K) for a batch of these examples: T the bucketed length of the longest row, K the
    number of target slots (a multiple of 8 covering the row with most loss targets)."""
    longest = max(len(e.ids) for e in examples)
    length = bucket_length(longest, max(max_length, longest))
    most_targets = max(int(np.count_nonzero(e.loss_mask)) for e in examples)
    return length, min(max(-(-most_targets // 8) * 8, 8), length)


def collate(
    examples: Sequence[Any],
    task_index: Mapping[str, int],
    *,
    batch_size: int,
    max_length: int,
    pad_id: int,
    left_pad: bool = False,
    length: int | None = None,
    num_targets: int | None = None,
) -> Batch:
    """Stacks encoded examples (encoding.EncodedExample) into padded arrays.

    Rows beyond len(examples) are padding rows with weight 0. Right padding for training,
    left padding (`left_pad`) for decoding. Returns ids, virtual_index, loss_mask, positions,
    attention_mask: [batch_size, T] (T = bucket of the longest row); task_id, weight: [batch_size];
    target_index, target_mask: [batch_size, K], the positions whose token is a loss target
    (K = a multiple of 8 covering the row with most targets), so logits are computed there only.
    `length` / `num_targets` fix T and K (e.g. to a global batch's, when each process collates
    only its rows).
    """
    if length is None or num_targets is None:
        length, num_targets = batch_shape(examples, max_length)
    batch = {
        "ids": np.full((batch_size, length), pad_id, np.int32),
        "virtual_index": np.full((batch_size, length), -1, np.int32),
        "loss_mask": np.zeros((batch_size, length), np.float32),
        "positions": np.zeros((batch_size, length), np.int32),
        "attention_mask": np.zeros((batch_size, length), bool),
        "task_id": np.zeros((batch_size,), np.int32),
        "weight": np.zeros((batch_size,), np.float32),
        "target_index": np.ones((batch_size, num_targets), np.int32),
        "target_mask": np.zeros((batch_size, num_targets), np.float32),
    }
    for row, example in enumerate(examples):
        n = len(example.ids)
        cols = slice(length - n, length) if left_pad else slice(0, n)
        batch["ids"][row, cols] = example.ids
        batch["virtual_index"][row, cols] = example.virtual_index
        batch["loss_mask"][row, cols] = example.loss_mask
        batch["positions"][row, cols] = np.arange(n)
        batch["attention_mask"][row, cols] = True
        batch["task_id"][row] = task_index[example.taskname]
        batch["weight"][row] = 1.0
        targets = np.flatnonzero(example.loss_mask) + cols.start
        batch["target_index"][row, : len(targets)] = targets
        batch["target_mask"][row, : len(targets)] = example.loss_mask[targets - cols.start]
    return batch


def split_micro_batches(batch: Batch, num_micro: int) -> Batch:
    """[G, ...] arrays -> [num_micro, G // num_micro, ...] for gradient accumulation."""
    return {
        k: v.reshape(num_micro, v.shape[0] // num_micro, *v.shape[1:]) for k, v in batch.items()
    }
