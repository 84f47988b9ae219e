"""The frozen GPT: one Flax model for the GPT-2 / Megatron and the Llama families.

A prompt enters through two generic seams, and nothing here knows about prompts: input
embeddings (`GPT.embed_tokens`, then `GPT.__call__(embeddings=...)`) and a per-layer key/value
override (`kv_override` + `kv_index`: rows that replace the keys and values a layer computes at
chosen slots, before the rotary embedding, so each key is rotated by its slot's position; deep
prompts use it). Blocks are stacked with `nn.scan` (parameters carry a leading `layers` axis),
which keeps compile time flat in depth.

Parameter tree (under "params"; L = layers, E = hidden, N = heads, K = kv heads, D = head dim):
  embed/embedding [V, E]; pos_embed/embedding [P, E] (learned positions only)
  layers/attn_norm/{scale, bias?} [L, E]; layers/mlp_norm/{scale, bias?} [L, E]
  layers/attn/{query [L, E, N, D], key [L, E, K, D], value [L, E, K, D]}/{kernel, bias?}
  layers/attn/out/kernel [L, N, D, E] (+ bias [L, E])
  layers/mlp/{gate?, up}/kernel [L, E, F] (+ bias [L, F]); layers/mlp/down/kernel [L, F, E]
  final_norm/{scale, bias?} [E]; head/kernel [E, V] (untied head only)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptlearn import layers, lowp

# Scanned layers: {"k", "v"}: [L, B, S, K, D]; unrolled: one {"k", "v"}: [B, S, K, D] per layer.
Cache = dict[str, jax.Array] | list[dict[str, jax.Array]]
# Keys and values to write over the computed ones: {"k", "v"}: [L, B, R, K, D], R rows per
# batch row; `kv_index` [B, T] int says which row sits at each position (-1: none).
KVOverride = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Architecture and numerics of a GPT; one config covers both families."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    max_position_embeddings: int
    position_embedding: str = "rope"  # "rope" | "learned"
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm"
    norm_eps: float = 1e-5
    activation: str = "swiglu"  # "swiglu" | "geglu" | "gelu" | "gelu_tanh"
    use_bias: bool = False
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    # Gemma 3: per-head RMS norms of queries and keys, norms after attention and MLP too
    # (four per block), input embeddings times embed_scale (sqrt(hidden)), and sliding-window
    # layers (keys within `sliding_window` slots, RoPE base `local_rope_base`) with every
    # `global_every`-th layer global (0: all global).
    qk_norm: bool = False
    post_norms: bool = False
    embed_scale: float = 1.0
    sliding_window: int = 0
    global_every: int = 0
    local_rope_base: float = 10000.0
    param_dtype: str = "float32"
    dtype: str = "float32"  # activations (residual stream, norms, attention)
    matmul_dtype: str = ""  # inputs of the weight matmuls, float32 accumulation; "": `dtype`
    remat_policy: str = "none"  # see REMAT_POLICIES
    # Each block runs its batch as this many independent row groups (no cache only): XLA:CPU's
    # executor then overlaps one group's single-threaded elementwise work with another's
    # matmuls. 1 on accelerators and whenever the batch axis is sharded.
    batch_chains: int = 1
    # False: one Block per layer, params "blocks_0".."blocks_{L-1}" (see `unstack_layers`).
    # A scan slices (copies) every weight out of the stack on each call, which dominates a
    # decode step; separate per-layer buffers are read in place.
    scan_layers: bool = True
    # True: kernels stored [*out, *in] (`serving_layout`): XLA:CPU's bf16 dots with a few rows
    # (a decode step) read such a kernel faster than [*in, *out].
    kernels_out_first: bool = False

    def __post_init__(self) -> None:
        checks = {
            "position_embedding": (self.position_embedding, ("rope", "learned")),
            "norm": (self.norm, ("rmsnorm", "layernorm")),
            "activation": (self.activation, ("swiglu", "geglu", "gelu", "gelu_tanh")),
            "remat_policy": (self.remat_policy, tuple(REMAT_POLICIES)),
            "dtype": (self.dtype, ("float32", "bfloat16", "float16")),
            "param_dtype": (self.param_dtype, ("float32", "bfloat16", "float16")),
            "matmul_dtype": (self.matmul_dtype, ("", "float32", "bfloat16", "float16")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"GPTConfig.{key}={value!r}: must be one of {allowed}")
        if self.batch_chains < 1:
            raise ValueError(f"GPTConfig.batch_chains={self.batch_chains}: must be >= 1")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"GPTConfig: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )

    @property
    def local_layers(self) -> np.ndarray:
        """[L] bool: which layers attend within the sliding window."""
        layer = np.arange(self.num_layers)
        if not self.sliding_window or not self.global_every:
            return np.zeros(self.num_layers, bool)
        return (layer + 1) % self.global_every != 0

    @property
    def layer_rope_bases(self) -> np.ndarray:
        """[L] float: each layer's RoPE base (sliding-window layers have their own)."""
        return np.where(self.local_layers, self.local_rope_base, self.rope_base)

    def replace(self, **changes: Any) -> GPTConfig:
        """A copy with some fields changed (e.g. dtype, remat_policy)."""
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Weights of the matmuls and embeddings (norm scales and biases left out)."""
        e, f, layer_count = self.hidden_size, self.ffn_hidden_size, self.num_layers
        attn = e * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = e * f * (3 if self.activation in ("swiglu", "geglu") else 2)
        total = layer_count * (attn + mlp) + self.vocab_size * e
        if not self.tie_embeddings:
            total += self.vocab_size * e
        if self.position_embedding == "learned":
            total += self.max_position_embeddings * e
        return total


# Which intermediate values a checkpointed block keeps; the rest is recomputed in the backward.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(lowp.WEIGHT_MATMUL),
    ),
    "dots_all": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_saveable,
        jax.checkpoint_policies.save_only_these_names(lowp.WEIGHT_MATMUL, lowp.ACTIVATION_MATMUL),
    ),
}

_LLAMA = dict(position_embedding="rope", norm="rmsnorm", activation="swiglu", use_bias=False)
# Megatron's fused bias-GELU kernel (NeMo's default) computes the tanh approximation.
_MEGATRON = dict(
    position_embedding="learned",
    norm="layernorm",
    activation="gelu_tanh",
    use_bias=True,
    norm_eps=1e-5,
)

# Gemma 3's block: GeGLU, q / k norms, four norms, scaled embeddings, local and global layers.
_GEMMA3 = dict(
    position_embedding="rope",
    norm="rmsnorm",
    activation="geglu",
    use_bias=False,
    qk_norm=True,
    post_norms=True,
    global_every=6,
    local_rope_base=10000.0,
)

VARIANTS: dict[str, GPTConfig] = {
    # Tiny models for unit tests.
    "test": GPTConfig(256, 64, 2, 4, 2, 16, 128, 128, **_LLAMA),
    "test-gpt2": GPTConfig(256, 64, 2, 4, 4, 16, 256, 128, **_MEGATRON),
    "test-gemma": GPTConfig(
        256,
        64,
        3,
        4,
        1,
        16,
        128,
        128,
        **{**_GEMMA3, "global_every": 3},
        embed_scale=8.0,
        sliding_window=4,
        rope_base=1e6,
    ),
    # The embedded default (SmolLM2-135M-Instruct); the GGUF file's metadata says the same.
    "smollm2-135m": GPTConfig(49152, 576, 30, 9, 3, 64, 1536, 8192, rope_base=100000.0, **_LLAMA),
    # A ~1B Llama-shaped model on the default tokenizer, for throughput checks.
    "test-1b": GPTConfig(49152, 2048, 16, 32, 8, 64, 8192, 4096, rope_base=100000.0, **_LLAMA),
    # The seed's NeMo Megatron GPT references.
    "gpt-345m": GPTConfig(50304, 1024, 24, 16, 16, 64, 4096, 2048, **_MEGATRON),
    "gpt-1.3b": GPTConfig(50304, 2048, 24, 16, 16, 128, 8192, 2048, **_MEGATRON),
    "gpt-5b": GPTConfig(50304, 4096, 24, 32, 32, 128, 16384, 2048, **_MEGATRON),
    "gpt-20b": GPTConfig(50304, 6144, 44, 48, 48, 128, 24576, 2048, **_MEGATRON),
    # Llama 2's 7B and 13B shapes (Touvron et al. 2023), for plans beside NeMo's sizes.
    "llama-7b": GPTConfig(32000, 4096, 32, 32, 32, 128, 11008, 4096, **_LLAMA),
    "llama-13b": GPTConfig(32000, 5120, 40, 40, 40, 128, 13824, 4096, **_LLAMA),
}


class Block(nn.Module):
    """One pre-norm transformer block; the scan carry is the residual stream."""

    config: GPTConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: Cache | None,
        cache_index: jax.Array | None,
        kv_override: KVOverride | None = None,
        kv_index: jax.Array | None = None,
        local_mask: jax.Array | None = None,
        is_local: jax.Array | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """x: [B, T, E] -> ([B, T, E], this layer's updated cache {"k", "v"}: [B, S, K, D]).

        kv_override: this layer's {"k", "v"}: [B, R, K, D]; kv_index: [B, T] (see KVOverride).
        local_mask: [B, T, S], `mask` within the sliding window, used when `is_local` (a bool
        scalar: this layer is a sliding-window one).
        """
        c = self.config
        if is_local is not None:
            mask = jnp.where(is_local, local_mask, mask)
        rope_base = c.rope_base if c.position_embedding == "rope" else None
        attn_norm = layers.make_norm(c.norm, c.norm_eps, c.dtype, c.param_dtype, "attn_norm")
        attn = layers.Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.use_bias,
            rope_base,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            matmul_dtype=c.matmul_dtype or None,
            kernels_out_first=c.kernels_out_first,
            qk_norm=c.qk_norm,
            norm_eps=c.norm_eps,
            local_rope_base=c.local_rope_base if c.sliding_window else None,
            name="attn",
        )
        post_norms = [
            layers.make_norm(c.norm, c.norm_eps, c.dtype, c.param_dtype, name)
            if c.post_norms
            else (lambda h: h)
            for name in ("post_attn_norm", "post_mlp_norm")
        ]
        mlp_norm = layers.make_norm(c.norm, c.norm_eps, c.dtype, c.param_dtype, "mlp_norm")
        mlp = layers.MLP(
            c.ffn_hidden_size,
            c.activation,
            c.use_bias,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            matmul_dtype=c.matmul_dtype or None,
            kernels_out_first=c.kernels_out_first,
            name="mlp",
        )

        def run(x, positions, mask, cache, kv_override, kv_index):
            h, cache = attn(
                attn_norm(x), positions, mask, cache, cache_index, kv_override, kv_index, is_local
            )
            x = x + post_norms[0](h)
            return x + post_norms[1](mlp(mlp_norm(x))), cache

        chains = c.batch_chains
        if chains > 1 and cache is None and x.shape[0] % chains == 0:
            rows = x.shape[0] // chains
            parts = [slice(i * rows, (i + 1) * rows) for i in range(chains)]

            def rows_of(tree, p):
                return None if tree is None else jax.tree.map(lambda a: a[p], tree)

            x = jnp.concatenate(
                [
                    run(
                        x[p],
                        positions[p],
                        mask[p],
                        None,
                        rows_of(kv_override, p),
                        rows_of(kv_index, p),
                    )[0]
                    for p in parts
                ],
                0,
            )
        else:
            x, cache = run(x, positions, mask, cache, kv_override, kv_index)
        # Pin the residual stream's layout at block boundaries (a no-op without a mesh).
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
        return x, cache


def pack_params(params: Any) -> Any:
    """Host params (the tree under "params") with the block stack's 16-bit floats as uint16.

    Free on the host (a numpy view) and what the scan slices anyway; without it every call
    bitcasts the whole stack on the device. GPT.apply takes packed and unpacked trees alike.
    """
    return {**params, "layers": jax.tree.map(lowp.host_bits, params["layers"])}


class GPT(nn.Module):
    """A decoder-only transformer; takes token ids or input embeddings."""

    config: GPTConfig

    def setup(self) -> None:
        c = self.config
        self.embed = layers.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            matmul_dtype=c.matmul_dtype or None,
        )
        if c.position_embedding == "learned":
            self.pos_embed = layers.Embed(
                c.max_position_embeddings,
                c.hidden_size,
                axes=("positions", "embed"),
                dtype=c.dtype,
                param_dtype=c.param_dtype,
            )
        block = Block
        if REMAT_POLICIES[c.remat_policy] is not None:
            block = nn.remat(block, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=False)
        if not c.scan_layers:
            self.blocks = [block(c) for _ in range(c.num_layers)]
        else:
            self.layers = self._scanned_stack(block)
        self.final_norm = layers.make_norm(c.norm, c.norm_eps, c.dtype, c.param_dtype, "final_norm")
        if not c.tie_embeddings:
            self.head = layers.DenseGeneral(
                (c.vocab_size,),
                ("embed", "vocab"),
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                matmul_dtype=c.matmul_dtype or None,
                out_first=c.kernels_out_first,
            )

    def _scanned_stack(self, block: Any) -> nn.Module:
        c = self.config
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast,) * 2 + (0, nn.broadcast, 0, nn.broadcast, nn.broadcast, 0),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        if jnp.dtype(c.param_dtype).itemsize == 2:  # blocks get uint16 bits (lowp.weight)
            stack = nn.map_variables(
                stack,
                "params",
                lambda tree: jax.tree.map(lowp.bits, tree),
                # blocks read param_dtype floats back (init's floats pass through as they are)
                lambda tree: jax.tree.map(lambda a: lowp.weight(a, c.param_dtype), tree),
                init=self.is_initializing(),
            )
        return stack(c)

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        """ids: [B, T] int -> token embeddings [B, T, E] (no positions added)."""
        return self.embed(ids)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final-normed hidden states [B, T, E] -> logits [B, T, V] float32."""
        out = self.embed.attend(hidden) if self.config.tie_embeddings else self.head(hidden)
        return out.astype(jnp.float32)

    def __call__(
        self,
        ids: jax.Array | None = None,
        *,
        embeddings: jax.Array | None = None,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        cache: Cache | None = None,
        cache_index: jax.Array | int | None = None,
        kv_override: KVOverride | None = None,
        kv_index: jax.Array | None = None,
        return_hidden: bool = False,
    ) -> tuple[jax.Array, Cache | None]:
        """Runs the stack.

        ids: [B, T] int, or embeddings: [B, T, E] (e.g. token embeddings with prompt rows
        written in). positions: [B, T] int (default 0..T-1), each token's place among its row's
        real tokens. attention_mask: [B, S] bool, which key slots hold real tokens (default
        all); S = T without a cache, the cache length with one; a key's place is the count of
        real slots before it (sliding-window layers compare places, not slots). cache:
        {"k", "v"}: [L, B, S, K, D] from `init_cache`; the new keys go to slots
        cache_index .. cache_index+T-1 and a query at slot i sees slots <= i.
        kv_override: {"k", "v"}: [L, B, R, K, D] with kv_index: [B, T] int: at each position
        whose index r >= 0, every layer's key (before rotary) and value are row r's instead
        of the ones computed from x (see KVOverride).
        Returns (logits [B, T, V] float32, or final-normed hidden [B, T, E] when return_hidden;
        the updated cache or None).
        """
        c = self.config
        if (ids is None) == (embeddings is None):
            raise ValueError("GPT: pass exactly one of ids or embeddings")
        x = self.embed(ids) if embeddings is None else embeddings.astype(c.dtype)
        if c.embed_scale != 1.0:  # Gemma: in the compute dtype, as transformers does
            x = x * jnp.asarray(c.embed_scale, c.dtype)
        batch, length = x.shape[:2]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        if c.position_embedding == "learned":
            x = x + self.pos_embed(positions)
        start = jnp.asarray(0 if cache_index is None else cache_index, jnp.int32)
        num_keys = length if cache is None else cache_length(cache)
        if attention_mask is None:
            attention_mask = jnp.ones((batch, num_keys), bool)
        query_slots = start + jnp.arange(length)
        causal = jnp.arange(num_keys)[None, :] <= query_slots[:, None]  # [T, S]
        mask = causal[None] & attention_mask[:, None, :].astype(bool)  # [B, T, S]
        local_mask = is_local = None
        if c.local_layers.any():
            # The window counts tokens, not slots: a key's position is the number of real slots
            # before it, so padding between a cached prefix and what follows shifts nothing.
            key_positions = jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1  # [B, S]
            near = positions[:, :, None] - key_positions[:, None, :] < c.sliding_window
            local_mask, is_local = mask & near, jnp.asarray(c.local_layers)
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
        if (kv_override is None) != (kv_index is None):
            raise ValueError("GPT: kv_override and kv_index come together")
        if c.scan_layers:
            x, cache = self.layers(
                x, positions, mask, cache, start, kv_override, kv_index, local_mask, is_local
            )
        else:
            updated = []
            for i, block in enumerate(self.blocks):
                x, layer_cache = block(
                    x,
                    positions,
                    mask,
                    None if cache is None else cache[i],
                    start,
                    None if kv_override is None else jax.tree.map(lambda a, i=i: a[i], kv_override),
                    kv_index,
                    local_mask,
                    None if is_local is None else is_local[i],
                )
                updated.append(layer_cache)
            cache = None if cache is None else updated
        hidden = self.final_norm(x)
        if return_hidden:
            return hidden, cache
        return self.logits(hidden), cache


def init_cache(config: GPTConfig, batch: int, length: int, dtype: Any = None) -> Cache:
    """An empty KV cache in the compute dtype (or `dtype`): {"k", "v"}: [L, B, length, K, D],
    or with unrolled layers a list of L {"k", "v"}: [B, length, K, D]."""
    shape = (batch, length, config.num_kv_heads, config.head_dim)
    dtype = dtype or config.dtype
    if not config.scan_layers:
        return [
            {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            for _ in range(config.num_layers)
        ]
    shape = (config.num_layers, *shape)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def cache_length(cache: Cache) -> int:
    """Key slots S of a cache in either layout."""
    return (cache[0] if isinstance(cache, list) else cache)["k"].shape[-3]


def init_params(config: GPTConfig, rng: jax.Array) -> Any:
    """Random parameters (boxed with logical axes) for `config`: {"params": ...}."""
    ids = jnp.zeros((1, 8), jnp.int32)
    return GPT(config).init(rng, ids)
