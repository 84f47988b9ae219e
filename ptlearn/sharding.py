"""Device mesh, logical-axis rules, and the shardings they give parameters and batches.

The mesh has three axes, outermost first: `data` (pure data parallelism), `fsdp` (data
parallelism that also shards the weights' `embed` dimension) and `model` (Megatron-style tensor
parallelism). Parameters and activations carry logical axis names (see `ptlearn.layers`,
`ptlearn.prompts`); an ordered table of (logical name, mesh axes) pairs maps them to the mesh.
Earlier pairs win and a mesh axis is used at most once per array (flax's semantics), so
`activation_batch -> (data, fsdp)` listed first keeps a later `embed -> fsdp` off activations.

The table is data: `rules_from_config` applies a config's overrides to `rules_for(...)`.
A dimension whose size its mesh axes do not divide (3 KV heads on TP=2) is replicated instead,
with one warning naming the parameter.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ptlearn.errors import ConfigError

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "model")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Megatron's split of a GPT over the `model` axis, FSDP over `embed`; order is priority.
DEFAULT_RULES: Rules = (
    # Activations first, so that batch claims `fsdp` before a weight-style `embed` could.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),  # "model" under sequence parallelism (rules_for)
    ("activation_embed", None),
    # Vocab-parallel embedding and output head.
    ("vocab", "model"),
    # QKV split by column (heads), attention output by row (heads).
    ("heads", "model"),
    ("kv_heads", "model"),
    # MLP in by column, MLP out by row.
    ("mlp", "model"),
    # FSDP shards every weight's other (hidden) dimension.
    ("embed", "fsdp"),
    ("head_dim", None),
    ("positions", None),
    ("layers", None),
    # Prompts are small: replicated, except the tpmlp encoder's hidden dimension.
    ("prompt_tokens", None),
    ("prompt_kv", None),  # deep prompts' key / value axis (their heads follow `kv_heads`)
    ("prompt_embed", None),
    ("prompt_hidden", None),
    ("prompt_mlp", "model"),
)


def select_devices(per_process: int) -> list[Any]:
    """The first `per_process` devices of every process (all of them when <= 0)."""
    chosen = []
    for process in range(jax.process_count()):
        mine = sorted((d for d in jax.devices() if d.process_index == process), key=lambda d: d.id)
        if per_process > len(mine):
            raise ConfigError(
                f"trainer.devices={per_process}: process {process} has only {len(mine)} devices"
            )
        chosen.extend(mine[:per_process] if per_process > 0 else mine)
    return chosen


def make_mesh(tensor_parallel: int, fsdp: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ("data", "fsdp", "model") mesh of shape [n / (TP x FSDP), FSDP, TP].

    devices: default every device of every process, ordered by (process, id) so that the
    `model` axis (innermost) stays within a host whenever TP divides its local device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    for key, value in (("model.tensor_model_parallel_size", tensor_parallel), ("mesh.fsdp", fsdp)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    count = len(devices)
    if count % (tensor_parallel * fsdp):
        raise ConfigError(
            f"model.tensor_model_parallel_size={tensor_parallel} x mesh.fsdp={fsdp} = "
            f"{tensor_parallel * fsdp} does not divide the {count} available devices; choose "
            "sizes whose product divides the device count"
        )
    devices.sort(key=lambda d: (d.process_index, d.id))
    grid = np.asarray(devices, dtype=object).reshape(
        count // (tensor_parallel * fsdp), fsdp, tensor_parallel
    )
    return Mesh(grid, MESH_AXES)


def _normalize_axes(value: Any, logical: str, key: str) -> MeshAxes:
    if value is None or value == "None":
        return None
    names = (value,) if isinstance(value, str) else tuple(value)
    for name in names:
        if name not in MESH_AXES:
            raise ConfigError(
                f"{key}: logical axis {logical!r} maps to {name!r}, which is not a mesh axis; "
                f"use None or one of {MESH_AXES}"
            )
    return names[0] if len(names) == 1 else names


def rules_for(sequence_parallel: bool = False) -> Rules:
    """DEFAULT_RULES, with `activation_length -> model` when sequence parallel."""
    if not sequence_parallel:
        return DEFAULT_RULES
    return tuple(
        (name, "model" if name == "activation_length" else axes) for name, axes in DEFAULT_RULES
    )


def rules_from_config(
    pairs: Any = (), *, sequence_parallel: bool = False, key: str = "mesh.rules"
) -> Rules:
    """`rules_for(sequence_parallel)` with the config's (logical, mesh axes) overrides applied.

    pairs: a sequence of 2-item pairs, or that sequence written as a string (a command-line
    override), e.g. `(("embed", None), ("activation_length", "model"))`. An override replaces
    the named logical axis in place (keeping its priority); a new name is appended last.
    key: the config key, for messages.
    """
    if isinstance(pairs, str):
        try:
            pairs = ast.literal_eval(pairs) if pairs.strip() else ()
        except (ValueError, SyntaxError) as err:
            raise ConfigError(f"{key}: cannot read {pairs!r} as (name, axes) pairs: {err}") from err
    rules = dict(rules_for(sequence_parallel))
    for pair in pairs or ():
        if isinstance(pair, str) or len(pair) != 2 or not isinstance(pair[0], str):
            raise ConfigError(
                f"{key}: {pair!r} is not a (logical axis name, mesh axes) pair, e.g. "
                "('embed', None) or ('activation_batch', ('data', 'fsdp'))"
            )
        rules[pair[0]] = _normalize_axes(pair[1], pair[0], key)
    return tuple(rules.items())


def _mesh_axes_of(names: Sequence[str | None], rules: Rules) -> list[MeshAxes]:
    """Logical names -> mesh axes per dimension: rules in order, each mesh axis used once."""
    result: list[MeshAxes] = [None] * len(names)
    assigned = [False] * len(names)
    used: set[str] = set()
    for logical, axes in rules:
        wanted = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        for dim, name in enumerate(names):
            if name != logical or assigned[dim] or used.intersection(wanted):
                continue
            result[dim], assigned[dim] = axes, True
            used.update(wanted)
    return result


def _axis_size(mesh: Mesh, axes: MeshAxes) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[name] for name in names)


def spec_for(
    shape: Sequence[int],
    names: Sequence[str | None],
    mesh: Mesh,
    rules: Rules,
    *,
    path: str = "?",
) -> PartitionSpec:
    """The PartitionSpec of one array [*shape] whose dimensions have logical `names`.

    A dimension whose size its mesh axes do not divide is replicated, with one warning naming
    `path` (e.g. 3 KV heads on a TP=2 mesh).
    """
    if len(names) != len(shape):
        raise ValueError(f"{path}: {len(names)} axis names {tuple(names)} for shape {shape}")
    axes = _mesh_axes_of(names, rules)
    dropped = []
    for dim, (size, mesh_axes) in enumerate(zip(shape, axes, strict=True)):
        if size % _axis_size(mesh, mesh_axes):
            dropped.append(f"{names[dim]}={size} over {mesh_axes} ({_axis_size(mesh, mesh_axes)})")
            axes[dim] = None
    if dropped:
        log.warning(
            "%s: replicated, not sharded, along %s (not divisible)", path, "; ".join(dropped)
        )
    return PartitionSpec(*axes)


def _path_str(path: tuple) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def logical_to_sharding(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """Boxed tree (e.g. `jax.eval_shape(init)`) -> the same tree, unboxed, of NamedShardings.

    Leaves that are `nn.Partitioned` boxes (of arrays or ShapeDtypeStructs) are sharded after
    their axis names; any other leaf is replicated.
    """

    def one(path: tuple, leaf: Any) -> NamedSharding:
        if _is_box(leaf):
            spec = spec_for(leaf.value.shape, leaf.names, mesh, rules, path=_path_str(path))
        else:
            spec = PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, abstract_tree, is_leaf=_is_box)


def shardings_for(tree: Any, mesh: Mesh, rules: Rules, axes: Any = None) -> Any:
    """A tree of NamedShardings for `tree`'s arrays, shaped like the unboxed tree.

    tree: a boxed (abstract) tree, whose boxes give the axis names; or a plain tree of arrays /
    ShapeDtypeStructs with `axes`, a tree of the same structure whose leaves are tuples of
    logical names (or PartitionSpecs of them; None: replicated), e.g. `nn.get_partition_spec`
    of a boxed twin of `tree`.
    """
    if axes is None:
        return logical_to_sharding(tree, mesh, rules)
    treedef = jax.tree_util.tree_structure(tree)
    try:
        names_list = treedef.flatten_up_to(axes)
    except (ValueError, TypeError) as err:
        raise ValueError(f"shardings_for: axes do not match the tree's structure: {err}") from err
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    shardings = []
    for (path, leaf), names in zip(leaves, names_list, strict=True):
        names = (None,) * len(leaf.shape) if names is None else tuple(names)
        spec = spec_for(leaf.shape, names, mesh, rules, path=_path_str(path))
        shardings.append(NamedSharding(mesh, spec))
    return jax.tree_util.tree_unflatten(treedef, shardings)


def shard_params(params: Any, shardings: Any) -> Any:
    """Places (possibly boxed) parameters on the mesh: unboxed tree of global jax.Arrays.

    shardings: from `shardings_for`, same structure as the unboxed params. Host (numpy) leaves
    must hold the same values in every process.
    """
    return jax.device_put(nn.meta.unbox(params), shardings)


def batch_mesh_axes(rules: Rules = DEFAULT_RULES) -> MeshAxes:
    """The mesh axes the batch dimension is split over (the rules' `activation_batch`)."""
    return _mesh_axes_of(("activation_batch",), rules)[0]


def batch_sharding(
    mesh: Mesh, rules: Rules = DEFAULT_RULES, *, micro_batched: bool = False
) -> NamedSharding:
    """Sharding of batch arrays: [B, ...] split along B over the batch axes ("data", "fsdp");
    with micro_batched, gradient-accumulation batches [A, M, ...] split along M.

    Trailing dimensions are replicated, so one sharding serves every array of a batch.
    """
    axes = batch_mesh_axes(rules)
    return NamedSharding(mesh, PartitionSpec(None, axes) if micro_batched else PartitionSpec(axes))


def data_parallel_size(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways the batch is split (data x fsdp under the default rules)."""
    return _axis_size(mesh, batch_mesh_axes(rules))


def accumulation_steps(
    global_batch_size: int, micro_batch_size: int, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> int:
    """A = global / (micro x data-parallel): micro-batches per step, each [M = micro x DP, ...].

    micro_batch_size is per data-parallel replica (NeMo's meaning).
    """
    dp = data_parallel_size(mesh, rules)
    if global_batch_size % (micro_batch_size * dp):
        raise ConfigError(
            f"model.global_batch_size={global_batch_size} is not a multiple of "
            f"model.micro_batch_size={micro_batch_size} x data-parallel size {dp} "
            f"(= {micro_batch_size * dp}); change one of them or the mesh"
        )
    return global_batch_size // (micro_batch_size * dp)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules) -> Iterator[Mesh]:
    """Context in which `nn.with_logical_constraint` (the GPT's activations) uses `rules`.

    Trace (first call) jitted functions inside it; use outside jit. A jitted function traced
    under other rules keeps them: make a fresh jit per (mesh, rules).
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield mesh
