"""The layout a frozen GPT decodes fastest in: unrolled layers and, for 16-bit weights,
out-first kernels. Training keeps the scanned, in-first layout of gpt.py."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ptlearn import lowp
from ptlearn.gpt import GPTConfig


def unstack_layers(config: GPTConfig, params: Any) -> tuple[GPTConfig, Any]:
    """(config, params under "params") with scanned layers -> the unrolled layout.

    The `layers` stack [L, ...] becomes "blocks_0".."blocks_{L-1}" (numpy views for host arrays;
    uint16 bits become `param_dtype` floats again). Inputs already unrolled pass through.
    """
    if not config.scan_layers:
        return config, params

    def floats(a: Any) -> Any:
        if isinstance(a, np.ndarray) and a.dtype == np.uint16:
            return a.view(jnp.dtype(config.param_dtype))
        return lowp.weight(a, config.param_dtype)

    stack = jax.tree.map(floats, params["layers"])
    unrolled = {k: v for k, v in params.items() if k != "layers"}
    for i in range(config.num_layers):
        unrolled[f"blocks_{i}"] = jax.tree.map(lambda a, i=i: a[i], stack)
    return config.replace(scan_layers=False), unrolled


def _kernels_out_first(tree: dict, name: str = "") -> dict:
    """Every "kernel" [*in, *out] -> [*out, *in] (attention's "out" contracts two axes)."""
    if "kernel" in tree and not isinstance(tree["kernel"], dict):
        kernel, in_dims = tree["kernel"], 2 if name == "out" else 1
        xp = np if isinstance(kernel, np.ndarray) else jnp
        return {**tree, "kernel": xp.moveaxis(kernel, range(in_dims), range(-in_dims, 0))}
    return {k: _kernels_out_first(v, k) if isinstance(v, dict) else v for k, v in tree.items()}


def serving_layout(config: GPTConfig, params: Any) -> tuple[GPTConfig, Any]:
    """(config, params under "params") -> the layout that decodes fastest: unrolled layers
    (`unstack_layers`) and, for 16-bit weights, kernels stored out-first
    (`GPTConfig.kernels_out_first`).

    Out-first kernels speed up bf16 decoding but slow float32's, which stays in-first
    (experiments/bench_vs_peft.md, "Measurements behind the layout"). Host (numpy) leaves stay on the host; the transposes are copied once, by
    device_put. Inputs already in the serving layout pass through.
    """
    config, params = unstack_layers(config, params)
    if config.kernels_out_first or not lowp.is_16bit_float(config.param_dtype):
        return config, params
    return config.replace(kernels_out_first=True), _kernels_out_first(params)
