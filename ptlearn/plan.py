"""What a prompt-learning run needs per device before booking hardware: the real train step
compiled over abstract parameters (no weight is allocated) on simulated devices.

  python -m ptlearn.plan --config=sentiment_prefix_tuning --variant=gpt-20b --devices=4 \
      --config.model.tensor_model_parallel_size=4 --fit=a100-80g,h100-80g

Prints per device the frozen and trainable parameter bytes, optimizer bytes, the step's
temporaries and total, the step's FLOPs, whether it fits each named accelerator (with the
largest micro-batch that does) and a step-time estimate at `--mfu`; then the partition spec of
every weight kind, and one JSON line. Numerics set to "auto" resolve as on a GPU (bf16 matmuls,
bf16 frozen weights, full remat). The memory and FLOP figures are XLA's own analysis of the
compiled step (here compiled for CPU devices: an accelerator's fusions differ, so treat them
as an estimate; experiments/plan_nemo_sizes.md compares with a real run).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

# name -> (memory bytes, dense bf16 peak FLOP/s): the accelerators a plan can be fitted to.
ACCELERATORS: dict[str, tuple[float, float]] = {
    "a100-40g": (40e9, 312e12),
    "a100-80g": (80e9, 312e12),
    "h100-80g": (80e9, 989e12),
    "h200-141g": (141e9, 989e12),
}
# Room left for the runtime (CUDA context, allocator fragmentation, NCCL buffers).
USABLE_FRACTION = 0.9


@dataclasses.dataclass
class Plan:
    """Per-device bytes of one compiled train step, and its FLOPs."""

    frozen_param_bytes: int
    trainable_param_bytes: int
    optimizer_bytes: int
    temp_bytes: int
    flops_per_step: float
    tokens_per_step: int
    frozen_dtype: str
    micro_batch_size: int
    specs: dict[str, str]

    @property
    def total_bytes(self) -> int:
        return (
            self.frozen_param_bytes
            + self.trainable_param_bytes
            + self.optimizer_bytes
            + self.temp_bytes
        )


def _per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _abstract(tree: Any, shardings: Any) -> Any:
    import jax

    return jax.tree_util.tree_map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), tree, shardings
    )


def weight_kind(path: str) -> str:
    """'lm/layers/attn/query/kernel' -> the same; numbered task names become 'TASK'."""
    return re.sub(r"^prompt/(tables|inputs)/[^/]+", r"prompt/\1/TASK", path)


def base_config(variant: str) -> Any:
    """The GPTConfig of a `gpt.VARIANTS` name, or of a model `load_model` finds (its weights
    are read once, for the shapes: use a variant for models this machine cannot hold)."""
    from ptlearn import gpt
    from ptlearn.checkpoints import load_model
    from ptlearn.errors import CheckpointError, ConfigError

    if variant in gpt.VARIANTS:
        return gpt.VARIANTS[variant]
    try:
        return load_model(variant, with_tokenizer=False).config
    except CheckpointError as err:
        raise ConfigError(
            f"--variant={variant!r}: neither a variant ({', '.join(gpt.VARIANTS)}) nor a model "
            f"({err})"
        ) from None


def _setup(config: Any, variant: str, micro_batch_size: int | None) -> Any:
    """A training Setup for `variant` without data or weights: "auto" numerics as on a GPU,
    random prompt init (the memory of any init), the mesh of this process's devices."""
    from ptlearn import config_checks, config_lib, numerics, sharding, train_setup
    from ptlearn.checkpoints.loading import LoadedModel

    base = base_config(variant)
    gpu = [types.SimpleNamespace(platform="gpu")]
    config, _ = numerics.resolve(config, gpu)
    with config.unlocked():
        if micro_batch_size is not None:  # one micro-batch per data-parallel group
            groups = config.model.global_batch_size // config.model.micro_batch_size
            config.model.micro_batch_size = micro_batch_size
            config.model.global_batch_size = micro_batch_size * groups
        n = len(config_lib.as_tuple(config.model.new_tasks))
        config.model.prompt_tuning.new_prompt_init_methods = ("random",) * max(n, 1)
    config_checks.validate(config)
    m = config.model
    devices = sharding.select_devices(config.trainer.devices)
    mesh = sharding.make_mesh(m.tensor_model_parallel_size, config.mesh.fsdp, devices)
    rules = sharding.rules_from_config(config.mesh.rules, sequence_parallel=m.sequence_parallel)
    return train_setup.without_data(config, LoadedModel(base, None, None, variant), mesh, rules)


def _full_length_batch(s: Any) -> dict[str, Any]:
    """One global batch [A, M, T] of rows filling max_seq_length (the largest shape a
    bucketed run compiles), 4 answer tokens each, of the first new task."""
    from ptlearn import bench
    from ptlearn.data import batching

    m = s.config.model
    task = s.new_tasks[0]
    virtual = s.templates[task].total_virtual_tokens
    examples = [
        dataclasses.replace(example, taskname=task)
        for example in bench.synthetic_examples(
            m.global_batch_size,
            m.max_seq_length - virtual,
            virtual,
            s.loaded.config.vocab_size,
            answer_tokens=4,
            seed=0,
        )
    ]
    host = batching.collate(
        examples,
        {t: i for i, t in enumerate(s.task_names)},
        batch_size=m.global_batch_size,
        max_length=m.max_seq_length,
        pad_id=0,
    )
    return batching.split_micro_batches(host, s.accumulation)


def build(config: Any, variant: str, micro_batch_size: int | None = None) -> Plan:
    """The plan of `config`'s train step for the `variant` base model on this process's
    devices (simulated ones: set XLA_FLAGS before JAX starts, as `main` does)."""
    import flax.linen as nn
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from ptlearn import gpt, masking, prompted, sharding, train_setup, train_state, training
    from ptlearn.checkpoints.loading import LoadedModel

    s = _setup(config, variant, micro_batch_size)
    config, mesh, rules, base = s.config, s.mesh, s.rules, s.loaded.config
    model_config = s.model.config
    lm_shardings = prompted.lm_shardings(model_config, mesh, rules)
    lm_shapes = nn.meta.unbox(
        jax.eval_shape(lambda: gpt.init_params(model_config, jax.random.key(0)))
    )["params"]
    lm = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, model_config.param_dtype), lm_shapes
    )

    def init_prompt(rng: Any, lm_params: Any) -> Any:
        with_params = dataclasses.replace(s, loaded=LoadedModel(base, lm_params, None, variant))
        return train_setup.init_prompt_params(with_params, rng)

    float_lm = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, np.float32), lm_shapes
    )
    boxed_prompt = jax.eval_shape(init_prompt, jax.random.key(0), float_lm)
    params = {"lm": lm, "prompt": nn.meta.unbox(boxed_prompt)}
    shardings = {
        "lm": lm_shardings,
        "prompt": sharding.logical_to_sharding(boxed_prompt, mesh, rules),
    }
    params = _abstract(params, shardings)
    labels = masking.param_labels(params, train_state.freeze_rules(s))
    trainable, frozen = masking.split(params, labels)
    trainable_labels, _ = masking.split(labels, labels)
    tx, _ = train_state.make_optimizer(config, 100, trainable_labels)
    replicated = NamedSharding(mesh, PartitionSpec())
    trainable_shardings, _ = masking.split(shardings, labels)
    opt_shardings = train_state.optimizer_shardings(tx, trainable, trainable_shardings, replicated)
    opt_state = _abstract(jax.eval_shape(tx.init, trainable), opt_shardings)
    scalar = jax.ShapeDtypeStruct((), np.int32, sharding=replicated)
    rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    state = {
        "trainable": trainable,
        "opt_state": opt_state,
        "step": scalar,
        "rng": jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated),
        "epoch": scalar,
        "batch_in_epoch": scalar,
    }
    micro = _full_length_batch(s)
    batch_sharding = sharding.batch_sharding(mesh, rules, micro_batched=True)
    batch = {
        k: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=batch_sharding) for k, a in micro.items()
    }
    with sharding.activate(mesh, rules):
        compiled = training.make_train_step(s, tx).lower(state, frozen, batch).compile()
    memory = compiled.memory_analysis()
    specs: dict[str, str] = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    for path, leaf in flat:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        specs.setdefault(weight_kind(name), str(leaf.sharding.spec))
    return Plan(
        frozen_param_bytes=_per_device_bytes(frozen),
        trainable_param_bytes=_per_device_bytes(trainable),
        optimizer_bytes=_per_device_bytes(opt_state),
        temp_bytes=int(memory.temp_size_in_bytes),
        flops_per_step=step_flops(base, micro, model_config.remat_policy == "full"),
        tokens_per_step=int(micro["ids"].size),
        frozen_dtype=str(model_config.param_dtype),
        micro_batch_size=s.config.model.micro_batch_size,
        specs=specs,
    )


def measure(config: Any, variant: str, steps: int = 10) -> dict[str, Any]:
    """The real train step of `config` for `variant` with random weights on this process's
    devices, timed: {"median_s", "tokens_per_s", "flops_per_step", "compile_s"}. For a lent
    GPU (experiments/gpu_check.sh), beside the plan's estimate."""
    import statistics
    import time

    import flax.linen as nn
    import jax
    import numpy as np

    from ptlearn import gpt, sharding, train_state, training
    from ptlearn.checkpoints.loading import LoadedModel

    s = _setup(config, variant, None)
    with jax.default_device(jax.devices("cpu")[0]):  # host weights, as a loaded model's
        params = jax.tree_util.tree_map(
            np.asarray, nn.meta.unbox(gpt.init_params(s.loaded.config, jax.random.key(0)))
        )
    s = dataclasses.replace(s, loaded=LoadedModel(s.loaded.config, params["params"], None, variant))
    # The schedule of the config's own run length (its warm-up must fit in it).
    state, frozen, tx, _ = train_state.init_state(s, max(s.config.trainer.max_steps, steps + 1))
    micro = _full_length_batch(s)
    batch = jax.device_put(micro, sharding.batch_sharding(s.mesh, s.rules, micro_batched=True))
    with sharding.activate(s.mesh, s.rules):
        step = training.make_train_step(s, tx)
        started = time.time()
        state, stats = step(state, frozen, batch)
        jax.block_until_ready(stats)
        compile_s = time.time() - started
        times = []
        for _ in range(steps):
            started = time.time()
            state, stats = step(state, frozen, batch)
            jax.block_until_ready(stats)
            times.append(time.time() - started)
    median = statistics.median(times)
    return {
        "median_s": median,
        "tokens_per_s": micro["ids"].size / median,
        "flops_per_step": step_flops(s.loaded.config, micro, s.model.config.remat_policy == "full"),
        "compile_s": compile_s,
    }


def step_flops(config: Any, batch: Mapping[str, Any], remat: bool) -> float:
    """Model FLOPs of one prompt-learning step: the forward pass and the backward pass with
    respect to activations only (frozen weights get no gradient), so 2x the forward (3x under
    full remat, which runs it twice). Forward per token: 2 per matmul weight of the blocks, and
    attention's scores and weighted sum over the row's length; the head's logits only at the
    loss targets (prompted.answer_nll gathers them). [A, M, T] batch arrays.

    (XLA's cost analysis counts a scanned layer once, not once per layer, so it is not used.)
    """
    c = config
    q_out = c.num_heads * c.head_dim
    kv_out = c.num_kv_heads * c.head_dim
    gated = c.activation in ("swiglu", "geglu")
    block_weights = c.hidden_size * (q_out + 2 * kv_out) + q_out * c.hidden_size
    block_weights += (3 if gated else 2) * c.hidden_size * c.ffn_hidden_size
    tokens = float(batch["ids"].size)
    length = batch["ids"].shape[-1]
    attention = 4.0 * c.num_layers * length * q_out  # q.k and weights.v per token, full rows
    forward = tokens * (2.0 * c.num_layers * block_weights + attention)
    forward += 2.0 * c.vocab_size * c.hidden_size * float(batch["target_index"].size)
    return (3.0 if remat else 2.0) * forward


def fits(plan: Plan, larger: Plan, accelerator: str) -> dict[str, Any]:
    """Whether `plan` fits `accelerator`, and the largest micro-batch that would: temporaries
    grow linearly with the micro-batch (`larger` is the plan at twice its size)."""
    memory, _ = ACCELERATORS[accelerator]
    usable = USABLE_FRACTION * memory
    fixed = plan.total_bytes - plan.temp_bytes
    per_row = max((larger.temp_bytes - plan.temp_bytes) / plan.micro_batch_size, 1.0)
    base = plan.temp_bytes - per_row * plan.micro_batch_size
    largest = int((usable - fixed - base) // per_row) if usable > fixed + base else 0
    return {"fits": plan.total_bytes <= usable, "largest_micro_batch": max(largest, 0)}


def step_seconds(plan: Plan, accelerator: str, devices: int, mfu: float) -> float:
    """The step time at `mfu` of the accelerators' dense bf16 peak."""
    _, peak = ACCELERATORS[accelerator]
    return plan.flops_per_step / (devices * peak * mfu)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: Sequence[str]) -> None:
    """Prints the plan of --config for --variant on --devices simulated devices."""
    del argv
    from absl import flags

    from ptlearn import cli
    from ptlearn.errors import ConfigError

    f = flags.FLAGS
    wanted = [a for a in f.fit.split(",") if a]
    unknown = [a for a in wanted if a not in ACCELERATORS]
    if unknown:
        raise ConfigError(f"--fit={f.fit}: unknown {unknown}; use {', '.join(ACCELERATORS)}")
    config = f.config
    with config.unlocked():
        config.trainer.devices = -1
    plan = build(config, f.variant)
    larger = build(config, f.variant, plan.micro_batch_size * 2)
    devices = f.devices
    print(f"{f.variant} on {devices} devices, micro-batch {plan.micro_batch_size}, per device:")
    rows = [
        ("frozen parameters", plan.frozen_param_bytes),
        ("trainable parameters", plan.trainable_param_bytes),
        ("optimizer state", plan.optimizer_bytes),
        ("step temporaries", plan.temp_bytes),
        ("total", plan.total_bytes),
    ]
    for name, value in rows:
        print(f"  {name:22s} {_gib(value)}")
    print(f"  FLOPs per step         {plan.flops_per_step:.3e} ({plan.tokens_per_step} tokens)")
    result: dict[str, Any] = {
        "variant": f.variant,
        "devices": devices,
        "micro_batch_size": plan.micro_batch_size,
        **{k: getattr(plan, k) for k in ("frozen_param_bytes", "trainable_param_bytes")},
        "optimizer_bytes": plan.optimizer_bytes,
        "temp_bytes": plan.temp_bytes,
        "total_bytes": plan.total_bytes,
        "flops_per_step": plan.flops_per_step,
        "tokens_per_step": plan.tokens_per_step,
        "frozen_dtype": plan.frozen_dtype,
        "fits": {},
    }
    for accelerator in wanted:
        verdict = fits(plan, larger, accelerator)
        seconds = step_seconds(plan, accelerator, devices, f.mfu)
        verdict["step_s_at_mfu"] = round(seconds, 4)
        result["fits"][accelerator] = verdict
        print(
            f"  {accelerator}: {'fits' if verdict['fits'] else 'does not fit'}; largest "
            f"micro-batch {verdict['largest_micro_batch']}; {seconds:.3f} s/step at "
            f"{f.mfu:.0%} MFU"
        )
    print("partition specs (mesh axes data, fsdp, model):")
    for kind, spec in sorted(plan.specs.items()):
        print(f"  {kind:48s} {spec}")
    cli.print_json(result)


if __name__ == "__main__":
    # The simulated devices exist only if XLA hears of them before JAX starts.
    count = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "1")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from absl import flags

    from ptlearn import cli

    cli.define_config()
    flags.DEFINE_string(
        "variant", "gpt-345m", "the base model's shape: a gpt.VARIANTS name or a model spec"
    )
    flags.DEFINE_integer("devices", 1, "simulated devices (the mesh: data x fsdp x model)")
    flags.DEFINE_string("fit", "a100-80g,h100-80g", "accelerators to fit, comma-separated")
    flags.DEFINE_float("mfu", 0.4, "model FLOPs utilisation assumed for the step-time estimate")
    cli.run(main)
