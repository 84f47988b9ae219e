"""One process of the 2-process test (tests/test_distributed.py): run as a script.

argv: coordinator port, process id. The parent sets 2 CPU devices per process. Prints one JSON
line with what this process computed over the global arrays.
"""

import json
import sys

import numpy as np

from ptlearn import distributed, sharding


def main(port: int, process_id: int) -> None:
    cfg = distributed.distributed_config()
    cfg.coordinator_address = f"127.0.0.1:{port}"
    cfg.num_processes = 2
    cfg.process_id = process_id
    cfg.initialization_timeout = 60
    assert distributed.initialize(cfg)

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = sharding.make_mesh(2)  # 4 devices in all: data 2 (one per process) x model 2
    replicated = NamedSharding(mesh, P())
    global_batch = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    batch_sharding = sharding.batch_sharding(mesh)
    rows = distributed.process_batch_slice(8)
    x = distributed.host_local_to_global(global_batch[rows], mesh)
    total = jax.jit(jnp.sum, out_shardings=replicated)(x)

    def local_sum(block):
        return jax.lax.psum(jnp.sum(block), ("data", "fsdp"))

    psum = jax.jit(
        jax.shard_map(local_sum, mesh=mesh, in_specs=P(("data", "fsdp")), out_specs=P())
    )(x)
    # A column-split (tensor-parallel) weight times the data-parallel batch.
    weight = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    placed = sharding.shard_params(
        {"w": weight},
        sharding.shardings_for(
            {"w": weight}, mesh, sharding.DEFAULT_RULES, axes={"w": ("embed", "mlp")}
        ),
    )
    product = jax.jit(jnp.matmul, out_shardings=replicated)(x, placed["w"])
    # Gradient-accumulation layout [A, M, ...]: each process holds its rows of every micro-batch.
    micro = global_batch.reshape(2, 4, 3)
    micro_rows = distributed.process_batch_slice(4)
    stacked = distributed.host_local_to_global(
        micro[:, micro_rows], mesh, sharding.batch_sharding(mesh, micro_batched=True)
    )
    per_micro = jax.jit(lambda a: jnp.sum(a, axis=(1, 2)), out_shardings=replicated)(stacked)
    print(
        json.dumps(
            {
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "device_count": jax.device_count(),
                "writer": distributed.is_writer(),
                "rows": [rows.start, rows.stop],
                "rows_from_sharding": [
                    distributed.process_batch_slice(8, sharding=batch_sharding).start,
                    distributed.process_batch_slice(8, sharding=batch_sharding).stop,
                ],
                "global_shape": list(x.shape),
                "total": float(total),
                "psum": float(psum),
                "product": np.asarray(product).tolist(),
                "weight_shard": list(placed["w"].addressable_shards[0].data.shape),
                "stacked_shape": list(stacked.shape),
                "per_micro": np.asarray(per_micro).tolist(),
            }
        ),
        flush=True,
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
