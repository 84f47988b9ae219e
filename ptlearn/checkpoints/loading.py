"""What every importer returns, and the checks and tree helpers they share."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from ptlearn.errors import CheckpointError
from ptlearn.gpt import GPT, GPTConfig

ParamTree = dict[str, Any]  # nested dict of numpy arrays: the GPT's tree *inside* "params"


@dataclasses.dataclass
class LoadedModel:
    """A base model read from disk: architecture, float weights, tokenizer, and where from."""

    config: GPTConfig
    params: ParamTree | None  # None once train.init_state moved the weights to the device
    tokenizer: Any  # ptlearn.tokenizers.Tokenizer, or None when the checkpoint carries none
    source: str


def stack_layers(
    per_layer: Iterable[Mapping[str, Any]], num_layers: int | None = None, dtype: Any = np.float32
) -> ParamTree:
    """[{path: array}] per layer -> {path: array with a leading layer axis}, nested by '/'.

    per_layer yields, per layer, '/'-joined paths inside the block (e.g. 'attn/query/kernel')
    mapped to arrays; each layer is cast to `dtype` into preallocated [L, ...] arrays as it
    comes, so a generator (with `num_layers`) holds one float32 layer at a time.
    """
    if num_layers is None:
        per_layer = list(per_layer)
        num_layers = len(per_layer)
    if not num_layers:
        raise CheckpointError("checkpoint has no transformer layers")
    stacked: dict[str, np.ndarray] = {}
    for i, layer in enumerate(per_layer):
        if not stacked:
            stacked = {
                k: np.empty((num_layers, *np.shape(v)), dtype) for k, v in sorted(layer.items())
            }
        if sorted(layer) != sorted(stacked):
            missing = sorted(set(stacked) ^ set(layer))
            raise CheckpointError(f"layer {i} has different tensors from layer 0: {missing}")
        for k, v in layer.items():
            stacked[k][i] = v
    return unflatten(stacked)


def unflatten(flat: Mapping[str, Any]) -> ParamTree:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
    tree: ParamTree = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """'/'-joined parameter path -> shape, for the GPT built from `config` (no allocation)."""
    abstract = jax.eval_shape(
        lambda: GPT(config).init(jax.random.key(0), np.zeros((1, 1), np.int32))
    )
    return {k: tuple(v.shape) for k, v in flatten(nn.unbox(abstract)["params"]).items()}


def check_params(
    config: GPTConfig, params: ParamTree, source: str, dtype: Any = np.float32
) -> ParamTree:
    """Checks names, shapes and floating dtypes against the architecture; casts to `dtype`
    numpy arrays (no copy for arrays already in it)."""
    want = expected_shapes(config)
    have = flatten(params)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"{source}: parameters do not match the architecture read from it "
            f"(missing: {missing[:5]}, unexpected: {extra[:5]})"
        )
    for path, shape in want.items():
        if tuple(np.shape(have[path])) != shape:
            raise CheckpointError(
                f"{source}: parameter {path} has shape {np.shape(have[path])}, "
                f"the architecture needs {shape}"
            )
        # A weight is floating point: integers here are a relabelled or forged tensor, which
        # a cast would turn into silent nonsense.
        if np.asarray(have[path]).dtype.kind in "biu":
            raise CheckpointError(
                f"{source}: parameter {path} is {np.asarray(have[path]).dtype}, not floating "
                "point: the file is corrupt or its tensor types are forged"
            )
    return unflatten({k: np.asarray(v, dtype=dtype) for k, v in have.items()})
