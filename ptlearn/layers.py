"""Transformer building blocks whose every parameter carries logical axis names.

Logical axes used: `vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `positions`
(and `layers`, added by the GPT's scan over blocks). `ptlearn.sharding` maps them to mesh axes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptlearn.lowp import Dtype, einsum, matmul, weight

default_kernel_init = nn.initializers.normal(stddev=0.02)


class DenseGeneral(nn.Module):
    """A linear map contracting the last `in_dims` axes of `x` into `out_shape`.

    x: [..., *in_shape] -> [..., *out_shape]; kernel: [*in_shape, *out_shape] with `kernel_axes`
    (names in that order), or with `out_first` [*out_shape, *in_shape] (the serving layout:
    XLA:CPU's few-row decode dots read a kernel whose contracted axes are minor faster).
    """

    out_shape: Sequence[int]
    kernel_axes: Sequence[str]
    in_dims: int = 1
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None  # None: `dtype`
    kernel_init: nn.initializers.Initializer = default_kernel_init
    out_first: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.in_dims :]
        out_shape = tuple(self.out_shape)
        shape, axes = in_shape + out_shape, tuple(self.kernel_axes)
        if self.out_first:
            shape, axes = out_shape + in_shape, axes[self.in_dims :] + axes[: self.in_dims]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, axes),
            shape,
            self.param_dtype,
        )
        y = matmul(
            x,
            kernel,
            self.in_dims,
            self.matmul_dtype or self.dtype,
            self.dtype,
            transpose_kernel=self.out_first,
            kernel_dtype=self.param_dtype,
        )
        if self.use_bias:
            bias_axes = tuple(self.kernel_axes[self.in_dims :])
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
                out_shape,
                self.param_dtype,
            )
            y = y + weight(bias, self.param_dtype).astype(self.dtype)
        return y


def _dense(
    owner: nn.Module, features: tuple[int, ...], axes: tuple[str, ...], name: str
) -> DenseGeneral:
    """A DenseGeneral of `owner` (Attention, MLP) with its bias, dtypes and kernel layout."""
    return DenseGeneral(
        features,
        axes,
        use_bias=owner.use_bias,
        dtype=owner.dtype,
        param_dtype=owner.param_dtype,
        matmul_dtype=owner.matmul_dtype,
        out_first=owner.kernels_out_first,
        name=name,
    )


class Embed(nn.Module):
    """A lookup table [num_embeddings, features]; `attend` reuses it as a tied output head."""

    num_embeddings: int
    features: int
    axes: tuple[str, str] = ("vocab", "embed")
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None  # of `attend`; None: `dtype`

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(default_kernel_init, self.axes),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids: [B, T] int -> [B, T, features] in `dtype`."""
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """x: [B, T, features] -> [B, T, num_embeddings] (x times the table's transpose)."""
        dtype = self.matmul_dtype or self.dtype
        return matmul(x, self.embedding, 1, dtype, self.dtype, transpose_kernel=True)


def _feature_vector(
    module: nn.Module, name: str, init: Any, features: int, axis: str = "embed"
) -> jax.Array:
    """A norm's [features] parameter (logical axis `axis`), read as floats."""
    value = module.param(
        name,
        nn.with_logical_partitioning(init, (axis,)),
        (features,),
        module.param_dtype,
    )
    return weight(value, module.param_dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama); statistics in float32 whatever the compute dtype."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis: str = "embed"  # the scale's logical axis ("head_dim" for per-head q / k norms)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _feature_vector(self, "scale", nn.initializers.ones, x.shape[-1], self.axis)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed.astype(self.dtype) * scale.astype(self.dtype)).astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with scale and bias (GPT-2 / Megatron); statistics in float32."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _feature_vector(self, "scale", nn.initializers.ones, x.shape[-1])
        bias = _feature_vector(self, "bias", nn.initializers.zeros, x.shape[-1])
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        scaled = normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return scaled.astype(self.dtype)


def make_norm(kind: str, eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Module:
    """`rmsnorm` or `layernorm`, by config name."""
    if kind == "rmsnorm":
        return RMSNorm(eps=eps, dtype=dtype, param_dtype=param_dtype, name=name)
    if kind == "layernorm":
        return LayerNorm(eps=eps, dtype=dtype, param_dtype=param_dtype, name=name)
    raise ValueError(f"unknown norm {kind!r}: use 'rmsnorm' or 'layernorm'")


def apply_rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding, half-split layout (HF Llama's `rotate_half`).

    x: [B, T, N, D]; positions: [B, T] int -> [B, T, N, D].
    """
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    dtype: Dtype,
    matmul_dtype: Dtype | None = None,
) -> jax.Array:
    """Grouped-query attention with softmax in float32.

    q: [B, T, N, D]; k, v: [B, S, K, D] with N a multiple of K; mask: [B, T, S] bool (True = may
    attend) -> [B, T, N, D] in `dtype`. The two products multiply in `matmul_dtype` (default
    `dtype`) with float32 accumulation.
    """
    batch, length, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    matmul_dtype = matmul_dtype or dtype
    # Heads-major operands ([B, K, G, T, D], [B, K, S, D]) transposed once here: XLA:CPU
    # otherwise re-lays-out the grouped products around every dot (timings: experiments/
    # bench_vs_peft.md, "Measurements behind the layout").
    q = q.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
    q = q.transpose(0, 2, 3, 1, 4)
    k, v = k.astype(q.dtype).transpose(0, 2, 1, 3), v.astype(dtype).transpose(0, 2, 1, 3)
    scores = einsum("bkgtd,bksd->bkgts", q, k, matmul_dtype)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = einsum("bkgts,bksd->bkgtd", weights, v, matmul_dtype).astype(dtype)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, num_heads, head_dim)


def override_rows(computed: jax.Array, rows: jax.Array, index: jax.Array) -> jax.Array:
    """computed: [B, T, K, D]; rows: [B, R, K, D]; index: [B, T] int -> computed with
    rows[b, index[b, t]] at each position whose index is >= 0 (in computed's dtype)."""
    picked = jnp.take_along_axis(rows, jnp.maximum(index, 0)[:, :, None, None], axis=1)
    return jnp.where((index >= 0)[:, :, None, None], picked.astype(computed.dtype), computed)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention with optional RoPE and a preallocated KV cache."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    use_bias: bool
    rope_base: float | None  # None: positions are added to the input instead (GPT-2)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None  # of the projections; None: `dtype`
    kernels_out_first: bool = False  # DenseGeneral.out_first
    qk_norm: bool = False  # RMS-normalise each head's query and key (Gemma 3)
    norm_eps: float = 1e-6
    local_rope_base: float | None = None  # the RoPE base of sliding-window layers

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: dict[str, jax.Array] | None,
        cache_index: jax.Array | None,
        kv_override: dict[str, jax.Array] | None = None,
        kv_index: jax.Array | None = None,
        is_local: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        """x: [B, T, E]; positions: [B, T]; mask: [B, T, S] bool; cache k/v: [B, S, K, D].

        Without a cache S = T. With one, the new keys are written at `cache_index` and the
        queries attend over all S cache slots (the mask says which are valid).
        kv_override {"k", "v"}: [B, R, K, D] with kv_index [B, T] int: where the index r >= 0
        the key (before rotary) and value are row r's rather than projected from x.
        is_local: this layer is a sliding-window one (its RoPE base is `local_rope_base`).
        Returns ([B, T, E], the updated cache or None).
        """
        features = x.shape[-1]

        def projection(num: int, axes: tuple[str, str, str], name: str) -> nn.Module:
            return _dense(self, (num, self.head_dim), axes, name)

        q = projection(self.num_heads, ("embed", "heads", "head_dim"), "query")(x)
        k = projection(self.num_kv_heads, ("embed", "kv_heads", "head_dim"), "key")(x)
        v = projection(self.num_kv_heads, ("embed", "kv_heads", "head_dim"), "value")(x)
        if self.qk_norm:
            norm = functools.partial(
                RMSNorm, eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype
            )
            q = norm(axis="head_dim", name="query_norm")(q)
            k = norm(axis="head_dim", name="key_norm")(k)
        if kv_override is not None:
            k, v = (
                override_rows(computed, kv_override[name], kv_index)
                for computed, name in ((k, "k"), (v, "v"))
            )
        if self.rope_base is not None:
            base = self.rope_base
            if is_local is not None and self.local_rope_base is not None:
                base = jnp.where(is_local, self.local_rope_base, self.rope_base)
            q = apply_rope(q, positions, base)
            k = apply_rope(k, positions, base)
        new_cache = None
        if cache is not None:
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
            new_cache = {"k": k, "v": v}
        out = dot_product_attention(q, k, v, mask, self.dtype, self.matmul_dtype)
        out = DenseGeneral(
            (features,),
            ("heads", "head_dim", "embed"),
            in_dims=2,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            matmul_dtype=self.matmul_dtype,
            out_first=self.kernels_out_first,
            name="out",
        )(out)
        return out, new_cache


class MLP(nn.Module):
    """SwiGLU (gate, up, down) or GELU (up, down) feed-forward block."""

    hidden: int
    activation: str  # "swiglu" | "geglu" (Gemma: tanh-GELU gate) | "gelu" | "gelu_tanh"
    use_bias: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None  # of the projections; None: `dtype`
    kernels_out_first: bool = False  # DenseGeneral.out_first

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, E] -> [B, T, E]."""
        features = x.shape[-1]

        def dense(out: int, axes: tuple[str, str], name: str) -> nn.Module:
            return _dense(self, (out,), axes, name)

        up = dense(self.hidden, ("embed", "mlp"), "up")(x)
        if self.activation == "swiglu":
            h = nn.silu(dense(self.hidden, ("embed", "mlp"), "gate")(x)) * up
        elif self.activation == "geglu":
            h = nn.gelu(dense(self.hidden, ("embed", "mlp"), "gate")(x), approximate=True) * up
        elif self.activation == "gelu":
            h = nn.gelu(up, approximate=False)
        elif self.activation == "gelu_tanh":
            h = nn.gelu(up, approximate=True)
        else:
            raise ValueError(f"unknown activation {self.activation!r}")
        return dense(features, ("mlp", "embed"), "down")(h)
