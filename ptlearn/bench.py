"""Throughput and memory of ptlearn's real train step, prompted forward and decoder (issue 5).

  python -m ptlearn.bench --model=default --mode=prompt --batch=8 --seq=128 --virtual_tokens=10 \
      --steps=10 [--dtype=float32|bfloat16] [--frozen_dtype=float32|bfloat16]
  python -m ptlearn.bench --model=default --data=F.jsonl --config=configs/sentiment_ptuning.py \
      --steps=10

Prints one JSON line. The fixed-shape workloads mirror ../shared/peer/bench_peft.py (the PEFT
harness): seeded synthetic ids in [17, vocab) (no special ids), virtual tokens prepended, the
loss over every text token (PEFT's labels=input_ids; `--answer_tokens=N` keeps only the last N),
AdamW, one step = forward + backward + optimizer update. The timed step is ptlearn's own:
`training.make_train_step` / `training.make_eval_step` on collated batches, `answers.generate_answers`
for decoding. The first call (trace + compile + one run) is reported as compile_s; then
`--steps` calls are timed, each ended by `jax.block_until_ready`.

Token counts: `tokens_per_s` counts every position of the padded batch, `real_tokens_per_s` the
non-padding ones including virtual tokens, `text_tokens_per_s` the non-padding text tokens only
(what the PEFT harness calls real_tokens_per_s).
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from ptlearn import (
    cli,
    config_checks,
    config_lib,
    encoding,
    machine,
    sharding,
    train_setup,
    train_state,
    training,
)
from ptlearn.checkpoints import load_model
from ptlearn.data import batching
from ptlearn.errors import ConfigError, PtlearnError

MODES = ("forward", "prompt", "ptune-mlp", "ptune-lstm", "generate")
DTYPES = {"float32": "32", "bfloat16": "bf16"}  # --dtype -> trainer.precision
# --remat -> model.activations_checkpoint_granularity
REMAT = {"none": None, "full": "full", "selective": "selective"}
TASK = "bench"
# The PEFT harness's defaults: its text init, its lr, and ids below 17 are special tokens.
PEER_INIT_TEXT = "Answer the following question truthfully and concisely:"
PEER_LR = 1e-4
FIRST_ID = 17
# Keys of a collated batch that have a time axis, and what padding fills them with.
TIME_KEYS = ("ids", "virtual_index", "loss_mask", "positions", "attention_mask")


@dataclasses.dataclass
class Options:
    """What to measure: the flags of `python -m ptlearn.bench` (`options(**values)` checks)."""

    mode: str | None = cli.option(None, "one of MODES; None with --data")
    model: str | None = cli.option(None, "'default', 'tiny' or a checkpoint path")
    batch: int = cli.option(8, "batch")
    seq: int = cli.option(128, "text tokens per row (virtual extra)")
    virtual_tokens: int = cli.option(10, "virtual tokens")
    steps: int = cli.option(10, "steps")
    dtype: str = cli.option("float32", "compute dtype: float32 | bfloat16")
    frozen_dtype: str = cli.option("float32", "storage of the frozen LM weights")
    remat: str = cli.option(
        "none", "activation checkpointing of the blocks: none | full | selective"
    )
    batch_chains: int = cli.option(0, "model.batch_chains (0: auto, 1: off)")
    answer_tokens: int = cli.option(0, "0: loss on every text token")
    prompt_len: int = cli.option(40, "generate: text tokens a prompt")
    new_tokens: int = cli.option(64, "generate: tokens per row")
    seed: int = cli.option(0, "seed")
    data: str | None = cli.option(None, "a task jsonl: time the real input pipeline")
    config: Any = cli.option(
        None, "with --data: the run's config (a ConfigDict, or FILE_OR_NAME[:arg])"
    )
    profile_dir: str | None = cli.option(None, "a jax.profiler trace of the timed calls")


def options(**values: Any) -> Options:
    """Options from keyword values (strings are cast to the fields' types), checked; a config
    given as `FILE_OR_NAME[:arg]` is loaded. Bad values raise PtlearnError."""
    fields = {f.name: f for f in dataclasses.fields(Options)}
    for name, value in values.items():
        if name not in fields:
            raise PtlearnError(f"ptlearn.bench: unrecognized option --{name}")
        if isinstance(value, str) and isinstance(fields[name].default, int):
            try:
                values[name] = int(value)
            except ValueError:
                raise PtlearnError(f"--{name}={value}: give an integer") from None
    result = Options(**values)
    if isinstance(result.config, str):
        result.config = config_lib.load_config(result.config)
    _check_args(result)
    return result


def _check_args(args: Options) -> None:
    for name in ("dtype", "frozen_dtype"):
        if getattr(args, name) not in DTYPES:
            raise PtlearnError(f"--{name}={getattr(args, name)}: use one of {', '.join(DTYPES)}")
    if args.remat not in REMAT:
        raise PtlearnError(f"--remat={args.remat}: use one of {', '.join(REMAT)}")
    for name in ("batch", "seq", "steps", "virtual_tokens", "prompt_len", "new_tokens"):
        if getattr(args, name) < 1:
            raise PtlearnError(f"--{name}={getattr(args, name)} must be >= 1")
    if not 0 <= args.answer_tokens <= args.seq:
        raise PtlearnError(f"--answer_tokens={args.answer_tokens} must be in [0, --seq]")
    if args.data is not None:
        if args.mode is not None:
            raise PtlearnError("--data takes its prompt style from --config; drop --mode")
        if args.config is None:
            raise PtlearnError("--data needs --config=FILE_OR_NAME (the run to measure)")
    elif args.mode not in MODES:
        raise PtlearnError(f"--mode={args.mode}: use one of {', '.join(MODES)} (or --data)")


# --------------------------------------------------------------------------------------------
# Shared pieces


def device_description() -> dict[str, Any]:
    """The accelerator (or CPU) the run used, for the JSON line."""
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}:{device.device_kind}",
        "device_count": jax.device_count(),
        "host": machine.cpu_description(),
        "jax": jax.__version__,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(
    call: Callable[[], Any], steps: int, profile_dir: str | None = None
) -> tuple[float, list[float]]:
    """(first call's seconds: compile + one run, [steps] seconds of the following calls).

    `call` returns device arrays; each call ends when they are ready. With --profile_dir the
    timed calls (not the compile) are traced for TensorBoard / Perfetto.
    """
    start = time.perf_counter()
    jax.block_until_ready(call())
    compile_s = time.perf_counter() - start
    times = []
    profiling = profile_dir is not None
    if profiling:
        jax.profiler.start_trace(profile_dir)
    try:
        for _ in range(steps):
            start = time.perf_counter()
            jax.block_until_ready(call())
            times.append(time.perf_counter() - start)
    finally:
        if profiling:
            jax.profiler.stop_trace()
    return compile_s, times


def synthetic_config(args: Options, hidden_size: int) -> ml_collections.ConfigDict:
    """A run config for the fixed-shape modes, shaped like the PEFT harness's workload."""
    c = config_lib.base_config()
    c.model.language_model_path = args.model
    ptuning = args.mode in ("ptune-mlp", "ptune-lstm")
    c.model.virtual_prompt_style = "p-tuning" if ptuning else "prompt-tuning"
    c.model.new_tasks = (TASK,)
    c.model.task_templates = (
        config_lib.task_template(
            TASK,
            "<|VIRTUAL_PROMPT_0|>{text}{answer}",
            total_virtual_tokens=args.virtual_tokens,
            virtual_token_splits=(args.virtual_tokens,),
            answer_field="answer",
            answer_only_loss=True,
        ),
    )
    # Rows fill max_seq_length exactly, so no bucket padding: PEFT processes seq + P too.
    c.model.max_seq_length = args.virtual_tokens + args.seq
    c.model.global_batch_size = c.model.micro_batch_size = args.batch
    c.model.prompt_tuning.new_prompt_init_methods = ("text",)
    c.model.prompt_tuning.new_prompt_init_text = (PEER_INIT_TEXT,)
    # PEFT's encoders: MLP = 3 Linear layers (2 ReLU), LSTM = 2-layer BiLSTM + MLP head;
    # encoder_hidden_size defaults to the token dimension.
    c.model.p_tuning.encoder_type = "lstm" if args.mode == "ptune-lstm" else "mlp"
    c.model.p_tuning.num_layers = 3 if args.mode == "ptune-mlp" else 2
    c.model.p_tuning.encoder_hidden = hidden_size
    c.model.p_tuning.dropout = 0.0
    c.model.optim.lr = PEER_LR
    c.model.optim.sched.warmup_steps = 0
    c.trainer.precision = DTYPES[args.dtype]
    c.model.frozen_weights_dtype = args.frozen_dtype
    c.model.activations_checkpoint_granularity = REMAT[args.remat]
    c.model.batch_chains = args.batch_chains
    c.trainer.max_steps = args.steps + 1
    config_checks.validate(c)
    return c


def synthetic_setup(args: Options, loaded: Any) -> training.Setup:
    """A training.Setup on one device for the synthetic task (no data files read)."""
    mesh = sharding.make_mesh(1, 1, sharding.select_devices(1))
    rules = sharding.rules_from_config((), sequence_parallel=False)
    return train_setup.without_data(
        synthetic_config(args, loaded.config.hidden_size), loaded, mesh, rules
    )


def synthetic_examples(
    rows: int, text_len: int, virtual: int, vocab_size: int, answer_tokens: int, seed: int
) -> list[encoding.EncodedExample]:
    """`rows` examples: `virtual` virtual tokens, then `text_len` seeded ids in [17, vocab).

    answer_tokens: 0 puts the loss on every text token (as PEFT's labels=input_ids: the first
    text token is predicted from the last virtual one); N > 0 on the last N only.
    """
    if vocab_size <= FIRST_ID:
        raise ConfigError(f"the model's vocabulary ({vocab_size}) has no ids >= {FIRST_ID}")
    ids = np.random.default_rng(seed).integers(FIRST_ID, vocab_size, (rows, text_len))
    length = virtual + text_len
    counted = text_len if answer_tokens == 0 else answer_tokens
    loss_mask = np.zeros(length, np.float32)
    loss_mask[length - counted :] = 1.0
    virtual_index = np.concatenate([np.arange(virtual), np.full(text_len, -1)]).astype(np.int32)
    fill = np.full(virtual, encoding.VIRTUAL_FILL_ID)
    return [
        encoding.EncodedExample(
            taskname=TASK,
            ids=np.concatenate([fill, row]).astype(np.int32),
            virtual_index=virtual_index,
            loss_mask=loss_mask,
            answer_start=length - counted,
        )
        for row in ids
    ]


def header(args: Options, mode: str, model: str) -> dict[str, Any]:
    return {
        "mode": mode,
        "model": model,
        "dtype": args.dtype,
        "frozen_dtype": args.frozen_dtype,
        "remat": args.remat,
        "batch": args.batch,
        "seq": args.seq,
        "virtual_tokens": args.virtual_tokens,
        "steps": args.steps,
    }


def rates(median: float, padded: float, real: float, text: float) -> dict[str, float]:
    return {
        "median_s_per_step": round(median, 6),
        "tokens_per_s": round(padded / median, 1),
        "real_tokens_per_s": round(real / median, 1),
        "text_tokens_per_s": round(text / median, 1),
    }


# --------------------------------------------------------------------------------------------
# Fixed-shape modes


def bench_fixed(args: Options) -> dict[str, Any]:
    """forward / prompt / ptune-mlp / ptune-lstm on one synthetic batch [batch, seq + P]."""
    loaded = load_model(args.model, dtype=args.frozen_dtype)
    load_peak = peak_rss_mb()
    s = synthetic_setup(args, loaded)
    examples = synthetic_examples(
        args.batch,
        args.seq,
        args.virtual_tokens,
        loaded.config.vocab_size,
        args.answer_tokens,
        args.seed,
    )
    host = batching.collate(
        examples,
        {TASK: 0},
        batch_size=args.batch,
        max_length=s.config.model.max_seq_length,
        pad_id=loaded.tokenizer.fill_id,
    )
    state, frozen, tx, _ = train_state.init_state(s, args.steps + 1)
    result = header(args, args.mode, args.model)
    result["batch_chains"] = s.model.config.batch_chains
    # Before the donating step runs.
    summary = param_summary(state["trainable"], frozen, s.model.config.param_dtype)
    with sharding.activate(s.mesh, s.rules):
        if args.mode == "forward":
            # The eval step: prompted forward + answer NLL, no gradient.
            eval_step = training.make_eval_step(s)
            batch = jax.device_put(host, sharding.batch_sharding(s.mesh, s.rules))
            compile_s, times = time_calls(
                lambda: eval_step(state["trainable"], frozen, batch), args.steps, args.profile_dir
            )
            loss = None
        else:
            train_step = training.make_train_step(s, tx)
            micro = batching.split_micro_batches(host, s.accumulation)
            batch = jax.device_put(
                micro, sharding.batch_sharding(s.mesh, s.rules, micro_batched=True)
            )
            holder = {"state": state}

            def one_step():
                holder["state"], stats = train_step(holder["state"], frozen, batch)
                holder["stats"] = stats
                return holder["state"], stats

            compile_s, times = time_calls(one_step, args.steps, args.profile_dir)
            loss = float(holder["stats"]["loss"])
    real = float(host["attention_mask"].sum())
    text = float((host["attention_mask"] & (host["virtual_index"] < 0)).sum())
    result.update(rates(statistics.median(times), host["ids"].size, real, text))
    result.update(
        {
            "padded_length": int(host["ids"].shape[1]),
            "loss_targets_per_row": int(host["loss_mask"][0].sum()),
            "loss_positions": "all text tokens" if args.answer_tokens == 0 else "answer only",
            "style": s.config.model.virtual_prompt_style,
            "encoder": encoder_text(s),
            **summary,
            "loss": None if loss is None else round(loss, 4),
            "step_times_s": [round(t, 6) for t in times],
            "compile_s": round(compile_s, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_after_load_mb": round(load_peak, 1),
        }
    )
    return result


def param_summary(trainable: Any, frozen: Any, weights_dtype: str) -> dict[str, Any]:
    """Trainable parameter count, and the frozen LM's size and storage dtypes.

    uint16 leaves are the packed bits of `weights_dtype` (gpt.pack_params) and count as it.
    """
    lm = [x for x in jax.tree_util.tree_leaves(frozen["lm"]) if hasattr(x, "nbytes")]
    return {
        "trainable_params": int(sum(x.size for x in jax.tree_util.tree_leaves(trainable))),
        "frozen_lm_mb": round(sum(x.nbytes for x in lm) / 2**20, 1),
        "frozen_lm_dtypes": sorted(
            {weights_dtype if x.dtype == np.uint16 else str(x.dtype) for x in lm}
        ),
    }


def encoder_text(s: training.Setup) -> str | None:
    e = s.encoder_config
    if e is None:
        return None
    return f"{e.encoder_type}, {e.num_layers} layers, hidden {e.encoder_hidden}"


# --------------------------------------------------------------------------------------------
# Entry point


def benchmark(args: Options) -> dict[str, Any]:
    """Runs the benchmark the options name; returns the JSON line's fields."""
    if args.data is not None:
        from ptlearn import bench_data  # it builds on this module's shared pieces

        result = bench_data.bench_data(args)
    else:
        args.model = args.model or "default"
        if args.mode == "generate":
            from ptlearn import bench_generate  # it builds on this module's shared pieces

            result = bench_generate.bench_generate(args)
        else:
            result = bench_fixed(args)
    result.update(device_description())
    return result


def main(argv: Sequence[str]) -> None:
    """Runs the flags' benchmark; prints its JSON line."""
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}: every option is a --flag")
    cli.print_json(benchmark(options(**cli.option_values(Options))))


if __name__ == "__main__":
    cli.define_options(Options)
    cli.run(main)
