"""Batched decoding: one jitted prefill, then a `lax.while_loop` over a preallocated KV cache.

Prompts of different lengths are left-padded; positions count real tokens only and padded key
slots are masked, so a row decodes exactly as it would alone. Each row stops at its EOS.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ptlearn.gpt import GPT, Cache, GPTConfig, cache_length, init_cache


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen (SPEC section 5's inference options)."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter

    def __post_init__(self) -> None:
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def choose_tokens(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """logits: [B, V] float32 -> next token ids [B] int32."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        cutoff_index = jnp.sum(cumulative < sampling.top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "tokens_to_generate", "sampling", "eos_ids"))
def decode(
    params: Any,
    ids: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    embeddings: jax.Array | None = None,
    prefix_cache: Cache | None = None,
    prefix_lengths: jax.Array | None = None,
    kv_override: Any = None,
    kv_index: jax.Array | None = None,
    *,
    config: GPTConfig,
    tokens_to_generate: int,
    sampling: Sampling,
    eos_ids: tuple[int, ...],
) -> tuple[jax.Array, jax.Array]:
    """Generates up to `tokens_to_generate` tokens after each left-padded prompt.

    params: the GPT's {"params": ...}; ids: [B, T] int32, left-padded; prompt_mask: [B, T] bool
    (True on real tokens); embeddings: optional [B, T, E] input embeddings used instead of ids
    for the prompt (the prompt-learning path); kv_override / kv_index: the prompt's key/value
    override (deep prompts, see `GPT.__call__`). prefix_cache: optional keys and values of tokens
    that come before each prompt, already computed ([.., B, P, K, D], see `prefix_cache`), row b
    holding prefix_lengths[b] (int32 [B]) of them in its first slots; the prompt then continues
    at position prefix_lengths[b]. Returns (tokens [B, N] int32, lengths [B] int32): row b's
    new tokens are tokens[b, :lengths[b]], EOS included when it was produced.
    """
    model = GPT(config)
    batch, prompt_len = ids.shape
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    key_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, tokens_to_generate), bool)], 1)
    start = 0
    if prefix_cache is not None:
        start = cache_length(prefix_cache)
        positions = positions + prefix_lengths[:, None]
        cache, key_mask = after_prefix(config, prefix_cache, prefix_lengths, key_mask)
    else:
        cache = init_cache(config, batch, prompt_len + tokens_to_generate)
    inputs = {"embeddings": embeddings} if embeddings is not None else {"ids": ids}
    hidden, cache = model.apply(
        params,
        **inputs,
        kv_override=kv_override,
        kv_index=kv_index,
        positions=positions,
        attention_mask=key_mask,
        cache=cache,
        cache_index=start,
        return_hidden=True,
    )
    last_logits = model.apply(params, hidden[:, -1:], method=GPT.logits)[:, 0]
    rng, step_rng = jax.random.split(rng)
    first = choose_tokens(last_logits, step_rng, sampling)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
    next_position = positions[:, -1] + 1

    tokens = jnp.zeros((batch, tokens_to_generate), jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, eos)
    lengths = jnp.ones((batch,), jnp.int32)

    def keep_going(state: tuple) -> jax.Array:
        step, _, _, _, done, _, _ = state
        return (step < tokens_to_generate) & ~jnp.all(done)

    def one_token(state: tuple) -> tuple:
        step, cache, tokens, lengths, done, last, rng = state
        logits, cache = model.apply(
            params,
            last[:, None],
            positions=(next_position + step - 1)[:, None],
            attention_mask=key_mask,
            cache=cache,
            cache_index=start + prompt_len + step - 1,
        )
        rng, step_rng = jax.random.split(rng)
        token = choose_tokens(logits[:, 0], step_rng, sampling)
        tokens = tokens.at[:, step].set(jnp.where(done, 0, token))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(token, eos)
        return step + 1, cache, tokens, lengths, done, token, rng

    state = (jnp.int32(1), cache, tokens, lengths, done, first, rng)
    _, _, tokens, lengths, _, _, _ = jax.lax.while_loop(keep_going, one_token, state)
    return tokens, lengths


@functools.partial(jax.jit, static_argnames=("config",))
def prefix_cache(
    params: Any,
    embeddings: jax.Array,
    lengths: jax.Array,
    kv_override: Any = None,
    kv_index: jax.Array | None = None,
    *,
    config: GPTConfig,
) -> Cache:
    """Keys and values of shared prompt prefixes (e.g. one per task), computed once.

    embeddings: [R, P, E], row r's prefix right-padded after lengths[r] (int32 [R]) tokens at
    positions 0..lengths[r]-1; kv_override / kv_index: the prefixes' key/value override (deep
    prompts, see `GPT.__call__`). Returns a cache ([.., R, P, K, D]) whose rows `decode` takes
    as `prefix_cache` (gather them per request first, see `gather_rows`).
    """
    rows, length = embeddings.shape[:2]
    mask = jnp.arange(length)[None, :] < lengths[:, None]
    _, cache = GPT(config).apply(
        params,
        embeddings=embeddings,
        kv_override=kv_override,
        kv_index=kv_index,
        attention_mask=mask,
        cache=init_cache(config, rows, length),
        cache_index=0,
        return_hidden=True,
    )
    return cache


def after_prefix(
    config: GPTConfig, prefix: Cache, prefix_lengths: jax.Array, key_mask: jax.Array
) -> tuple[Cache, jax.Array]:
    """The cache and key mask for tokens that continue each row's prefix.

    prefix: [.., B, P, K, D], row b's first prefix_lengths[b] (int32 [B]) slots real;
    key_mask: [B, S] bool, which of the S fresh slots after it will hold real tokens.
    Returns (cache [.., B, P + S, K, D], the new slots empty; key mask [B, P + S]); the
    continuation's first token goes to slot P, at position prefix_lengths[b].
    """
    batch, fresh = key_mask.shape
    prefix_mask = jnp.arange(cache_length(prefix))[None, :] < prefix_lengths[:, None]
    cache = jax.tree.map(
        lambda p, c: jnp.concatenate([p.astype(c.dtype), c], axis=-3),
        prefix,
        init_cache(config, batch, fresh),
    )
    return cache, jnp.concatenate([prefix_mask, key_mask], 1)


@jax.jit
def gather_rows(cache: Cache, rows: jax.Array) -> Cache:
    """cache [.., R, P, K, D], rows: [B] int32 -> the cache of those rows [.., B, P, K, D]."""
    return jax.tree.map(lambda a: jnp.take(a, rows, axis=a.ndim - 4), cache)


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads prompts to a common length rounded up to `multiple` (few distinct shapes).

    Returns (ids [B, T] int32, mask [B, T] bool).
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (add BOS for empty prompts)")
    longest = max(len(p) for p in prompts)
    length = -(-longest // multiple) * multiple
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = prompt
        mask[row, length - len(prompt) :] = True
    return ids, mask


def generate(
    config: GPTConfig,
    params: Any,
    prompts: Sequence[Sequence[int]],
    *,
    tokens_to_generate: int = 30,
    sampling: Sampling = Sampling(),
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    seed: int = 0,
) -> list[list[int]]:
    """Generates a continuation of each prompt (a list of token ids); batched, one compile.

    params: the GPT's inner parameter tree (without the "params" key). Returns, per prompt,
    the new token ids, ending with the EOS token when one was produced.
    """
    if tokens_to_generate < 1:
        raise ValueError(f"tokens_to_generate must be >= 1, got {tokens_to_generate}")
    ids, mask = left_pad(prompts, pad_id)
    tokens, lengths = decode(
        {"params": params},
        jnp.asarray(ids),
        jnp.asarray(mask),
        jax.random.key(seed),
        config=config,
        tokens_to_generate=tokens_to_generate,
        sampling=sampling,
        eos_ids=tuple(int(e) for e in eos_ids),
    )
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [tokens[row, : lengths[row]].tolist() for row in range(len(prompts))]
