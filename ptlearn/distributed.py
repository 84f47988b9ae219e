"""Several hosts through JAX's own multi-process runtime (`jax.distributed`).

Every process runs the same program. Process 0 writes (logs, checkpoints' metadata, the prompt
model); each process reads only its own rows of every global batch and `host_local_to_global`
assembles them into one global jax.Array sharded over the mesh.

Config section `distributed` (see `distributed_config`): either `auto` (SLURM, Open MPI,
Kubernetes or TPU pods fill in the rest) or an explicit coordinator address, process count and
process id. One process (`num_processes=1`, not `auto`) needs no initialisation at all.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ptlearn import sharding as sharding_lib
from ptlearn.errors import ConfigError

CPU_COLLECTIVES = ("gloo", "mpi")


def distributed_config() -> ml_collections.ConfigDict:
    """The `distributed` config section, with single-process defaults."""
    return ml_collections.ConfigDict(
        dict(
            auto=False,  # True: jax.distributed.initialize() detects SLURM / Open MPI / k8s
            coordinator_address="",  # "host:port" of process 0's coordinator service
            num_processes=1,
            process_id=0,
            local_device_ids=(),  # () = every local device
            cpu_collectives="gloo",  # cross-process collectives on CPU: "gloo" or "mpi"
            initialization_timeout=300,  # seconds to wait for every process to join
        )
    )


def _check(cfg: Any) -> None:
    if cfg.cpu_collectives not in CPU_COLLECTIVES:
        raise ConfigError(
            f"distributed.cpu_collectives={cfg.cpu_collectives!r}: use one of {CPU_COLLECTIVES}"
        )
    if cfg.auto:
        return
    if cfg.num_processes < 1:
        raise ConfigError(f"distributed.num_processes={cfg.num_processes} must be >= 1")
    if cfg.num_processes == 1:
        return
    if not cfg.coordinator_address or ":" not in str(cfg.coordinator_address):
        raise ConfigError(
            f"distributed.coordinator_address={cfg.coordinator_address!r}: with "
            f"distributed.num_processes={cfg.num_processes} give process 0's 'host:port' "
            "(or set distributed.auto=True under SLURM / Open MPI / Kubernetes)"
        )
    if not 0 <= cfg.process_id < cfg.num_processes:
        raise ConfigError(
            f"distributed.process_id={cfg.process_id} must be in [0, "
            f"distributed.num_processes={cfg.num_processes})"
        )


def initialize(cfg: Any) -> bool:
    """Joins the multi-process runtime; call before any other JAX call. True when multi-process.

    cfg: the `distributed` section (`distributed_config()` with overrides). Does nothing for a
    single process, or when already initialised.
    """
    _check(cfg)
    if not cfg.auto and cfg.num_processes == 1:
        return False
    if jax.distributed.is_initialized():
        return True
    # Only the CPU client reads it; it must be set before the backend starts.
    jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    kwargs: dict[str, Any] = {"initialization_timeout": int(cfg.initialization_timeout)}
    if cfg.coordinator_address:
        kwargs["coordinator_address"] = str(cfg.coordinator_address)
    if cfg.local_device_ids:
        kwargs["local_device_ids"] = [int(i) for i in cfg.local_device_ids]
    if not cfg.auto:
        kwargs.update(num_processes=int(cfg.num_processes), process_id=int(cfg.process_id))
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(
            f"distributed: jax.distributed.initialize({kwargs}) failed: {err}; check "
            "distributed.coordinator_address / num_processes / process_id (or distributed.auto)"
        ) from err
    return True


def is_writer() -> bool:
    """True in the one process (index 0) that writes files and logs."""
    return jax.process_index() == 0


def process_batch_slice(
    global_batch_size: int,
    *,
    sharding: NamedSharding | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> slice:
    """The rows [start, stop) of every global batch [global_batch_size, ...] this process reads.

    Without `sharding`: contiguous, equal blocks in process order, which is what
    `sharding.batch_sharding` on a `sharding.make_mesh` mesh gives when TP divides each host's
    device count. With `sharding` (a [B, ...] batch sharding): the rows this process's devices
    hold, read off the sharding. process_index / process_count default to this process and
    the number of processes.
    """
    if sharding is not None:
        return _rows_of_sharding(global_batch_size, sharding)
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} is not in [0, {count})")
    if global_batch_size % count:
        raise ConfigError(
            f"model.global_batch_size={global_batch_size} is not a multiple of the "
            f"{count} processes (distributed.num_processes); each process reads an equal share"
        )
    rows = global_batch_size // count
    return slice(index * rows, (index + 1) * rows)


def _rows_of_sharding(global_batch_size: int, sharding: NamedSharding) -> slice:
    try:
        index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    except ValueError as err:
        raise ConfigError(
            f"model.global_batch_size={global_batch_size} cannot be split over the batch "
            f"sharding {sharding.spec}: {err}"
        ) from err
    ranges = {index[0].indices(global_batch_size)[:2] for index in index_map.values()}
    start, stop = min(r[0] for r in ranges), max(r[1] for r in ranges)
    covered = sum(b - a for a, b in ranges)
    if covered != stop - start:
        raise ValueError(
            f"this process's devices hold rows {sorted(ranges)} of the batch, not one contiguous "
            "block; order the mesh's devices by process"
        )
    return slice(start, stop)


def host_local_to_global(
    local_batch: Any, mesh: Mesh, sharding: NamedSharding | PartitionSpec | None = None
) -> Any:
    """This process's rows -> global jax.Arrays on `mesh` (a pytree in, the same pytree out).

    local_batch: numpy arrays [B_local, ...] (the `process_batch_slice` rows), or [A, M_local,
    ...] with the micro-batched sharding. sharding: default `sharding.batch_sharding(mesh)`;
    a PartitionSpec is taken on `mesh`. Returns arrays [B, ...] (B = B_local x processes).
    """
    if sharding is None:
        sharding = sharding_lib.batch_sharding(mesh)
    elif isinstance(sharding, PartitionSpec):
        sharding = NamedSharding(mesh, sharding)
    local_batch = jax.tree_util.tree_map(np.asarray, local_batch)
    return jax.make_array_from_process_local_data(sharding, local_batch)


def to_host(tree: Any) -> Any:
    """Numpy copies of (possibly multi-process, sharded) jax.Arrays, the same in every process."""
    from jax.experimental import multihost_utils

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)
