"""P-tuning's prompt encoders: a task's learned inputs [..., P, E_in] -> its prompt table
[..., P, E] (mlp, lstm, biglstm, tpmlp), also deep prompts' P-tuning v2 projection (an mlp
whose output is reshaped to per-layer keys and values). prompts.py turns them into tables.

Logical axes: `prompt_tokens`, `prompt_embed` (E or E_in), `prompt_hidden` /
`prompt_hidden_out` (the input and output side of square hidden kernels, replicated) and
`prompt_mlp` (tpmlp's hidden, split over the model axis).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptlearn import layers
from ptlearn.errors import ConfigError

ENCODER_TYPES = ("mlp", "lstm", "biglstm", "tpmlp")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """A p-tuning prompt encoder (model.p_tuning.*); validated on construction.

    embed_dim: E, the LM's hidden size (the encoder's output width). input_dim: E_in, the width
    of each task's learned inputs (default E). num_layers: Dense layers for `mlp` (>= 2), LSTM
    layers for `lstm` / `biglstm`; `tpmlp` always has two. encoder_hidden: hidden width (LSTM
    hidden per direction for `lstm`; `biglstm` uses E). init_std: std of the inputs and kernels.
    """

    encoder_type: str
    embed_dim: int
    num_layers: int = 2
    encoder_hidden: int = 2048
    dropout: float = 0.0
    init_std: float = 0.023
    input_dim: int | None = None
    # Each virtual token's row: () is [embed_dim]; deep prompts' (L, 2, K, D) has embed_dim
    # equal to its product, the encoder's output reshaped (P-tuning v2's prefix projection).
    table_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.encoder_type not in ENCODER_TYPES:
            raise ConfigError(
                f"model.p_tuning.encoder_type={self.encoder_type!r}: use one of "
                f"{', '.join(ENCODER_TYPES)}"
            )
        if self.encoder_type == "mlp" and self.num_layers < 2:
            raise ConfigError(
                f"model.p_tuning.num_layers={self.num_layers}: the mlp encoder needs >= 2 layers"
            )
        if self.num_layers < 1:
            raise ConfigError(f"model.p_tuning.num_layers={self.num_layers} must be >= 1")
        if self.encoder_hidden < 1:
            raise ConfigError(f"model.p_tuning.encoder_hidden={self.encoder_hidden} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.p_tuning.dropout={self.dropout} must be in [0, 1)")
        if self.init_std <= 0:
            raise ConfigError(f"model.p_tuning.init_std={self.init_std} must be > 0")
        if self.table_shape and int(np.prod(self.table_shape)) != self.embed_dim:
            raise ValueError(f"EncoderConfig: table_shape {self.table_shape} != embed_dim")

    @property
    def in_dim(self) -> int:
        """E_in, the width of the learned inputs."""
        return self.input_dim or self.embed_dim

    @property
    def num_params(self) -> int:
        """The encoder's parameter count (weights and biases), computed from its sizes alone."""
        e_in, e, h, n = self.in_dim, self.embed_dim, self.encoder_hidden, self.num_layers
        if self.encoder_type == "mlp":
            return e_in * h + (n - 2) * h * h + h * e + (n - 1) * h + e
        if self.encoder_type == "tpmlp":
            return e_in * h + h * e + h + e
        h = e if self.encoder_type == "biglstm" else h
        lstm = sum(2 * (4 * h * ((e_in if i == 0 else 2 * h) + h) + 4 * h) for i in range(n))
        return lstm + 2 * h * h + h + h * e + e


def _dense(features: int, axes: tuple[str, str], std: float, name: str) -> layers.DenseGeneral:
    return layers.DenseGeneral(
        (features,), axes, use_bias=True, kernel_init=nn.initializers.normal(std), name=name
    )


class LSTMDirection(nn.Module):
    """One direction of an LSTM layer over the virtual-token axis.

    x: [..., P, D] -> hidden states [..., P, H], read back-to-front when `reverse`.
    """

    hidden: int
    init_std: float
    in_axis: str
    reverse: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.hidden
        # Input projections of all steps at once; only the recurrence runs sequentially.
        gates_x = _dense(4 * h, (self.in_axis, "prompt_hidden"), self.init_std, "input")(x)
        w_rec = self.param(
            "recurrent_kernel",
            nn.with_logical_partitioning(
                nn.initializers.normal(self.init_std), ("prompt_hidden", "prompt_hidden_out")
            ),
            (h, 4 * h),
            jnp.float32,
        )

        def step(carry: tuple[jax.Array, jax.Array], gx: jax.Array) -> tuple[Any, jax.Array]:
            h_prev, c_prev = carry
            i, f, g, o = jnp.split(gx + h_prev @ w_rec, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_new = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h_new, c), h_new

        steps = jnp.moveaxis(gates_x, -2, 0)  # [P, ..., 4H]
        zeros = jnp.zeros(steps.shape[1:-1] + (h,), steps.dtype)
        _, hs = jax.lax.scan(step, (zeros, zeros), steps, reverse=self.reverse)
        return jnp.moveaxis(hs, 0, -2)


class PromptEncoder(nn.Module):
    """The p-tuning encoder: a task's inputs [..., P, E_in] -> its prompt table [..., P, E].

    mlp: Dense+ReLU layers (NeMo). lstm / biglstm: bidirectional LSTM then an MLP head
    2H -> H -> E (Liu et al.). tpmlp: E_in -> encoder_hidden (GELU) -> E, hidden axis
    `prompt_mlp` so the first kernel splits by column, the second by row. Dropout follows every
    hidden activation (and sits between LSTM layers) when not deterministic.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, inputs: jax.Array, *, deterministic: bool = True) -> jax.Array:
        c = self.config
        dropout = nn.Dropout(c.dropout, deterministic=deterministic)
        x = inputs.astype(jnp.float32)
        if c.encoder_type == "mlp":
            for i in range(c.num_layers):
                last = i == c.num_layers - 1
                axes = (
                    "prompt_embed" if i == 0 else "prompt_hidden",
                    "prompt_embed" if last else "prompt_hidden_out",
                )
                width = c.embed_dim if last else c.encoder_hidden
                x = _dense(width, axes, c.init_std, f"layer_{i}")(x)
                if not last:
                    x = dropout(nn.relu(x))
            return x
        if c.encoder_type == "tpmlp":
            x = _dense(c.encoder_hidden, ("prompt_embed", "prompt_mlp"), c.init_std, "first")(x)
            x = dropout(nn.gelu(x, approximate=False))
            return _dense(c.embed_dim, ("prompt_mlp", "prompt_embed"), c.init_std, "second")(x)
        hidden = c.embed_dim if c.encoder_type == "biglstm" else c.encoder_hidden
        for i in range(c.num_layers):
            in_axis = "prompt_embed" if i == 0 else "prompt_hidden"
            fwd = LSTMDirection(hidden, c.init_std, in_axis, name=f"lstm_{i}_fwd")(x)
            bwd = LSTMDirection(hidden, c.init_std, in_axis, reverse=True, name=f"lstm_{i}_bwd")(x)
            x = jnp.concatenate([fwd, bwd], axis=-1)
            if i < c.num_layers - 1:
                x = dropout(x)
        x = _dense(hidden, ("prompt_hidden", "prompt_hidden_out"), c.init_std, "head_0")(x)
        x = dropout(nn.relu(x))
        return _dense(c.embed_dim, ("prompt_hidden", "prompt_embed"), c.init_std, "head_1")(x)


def init_encoder(config: EncoderConfig, rng: jax.Array) -> dict[str, Any]:
    """The encoder's parameters (boxed with logical axes; their shapes do not depend on P)."""
    dummy = jnp.zeros((1, config.in_dim), jnp.float32)
    return PromptEncoder(config).init(rng, dummy)["params"]
