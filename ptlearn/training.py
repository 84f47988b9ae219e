"""Prompt learning on a frozen GPT: `train_and_evaluate(config, workdir) -> runs.Run`
(`ptlearn.train` in the public API; `python -m ptlearn.train` on the command line).

Only prompt parameters train: ordered regex rules label every parameter, the gradient is taken
with respect to the trainable partition alone, and the optimizer never sees frozen weights.
The full training state (prompt parameters, optimizer, step, data position, RNG) is
checkpointed at every validation, so a killed run resumes where it stopped. At the end the best
state (by val_loss) is frozen into per-task prompt tables: `W/prompt_model/`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ptlearn import (
    config_checks,
    distributed,
    files,
    machine,
    masking,
    prompted,
    prompts,
    runs,
    sharding,
)
from ptlearn.checkpoints.prompt_model import check_replaceable
from ptlearn.checkpoints.train_state import LogWindow, TrainCheckpoints
from ptlearn.evaluation import (
    frozen_tables,
    spread,
    validate_loss,
    validate_tasks,
    write_prompt_model,
)
from ptlearn.run_guards import (
    Interrupted,
    check_finite,
    check_writable,
    stop_error,
    stop_signals,
    workdir_failures,
)
from ptlearn.run_log import RunLog
from ptlearn.train_batches import Batches, total_steps, validation_interval
from ptlearn.train_setup import Setup, init_prompt_params, setup
from ptlearn.train_state import init_state

__all__ = ["Setup", "init_prompt_params", "init_state", "setup", "train_and_evaluate"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Steps


def _tables(s: Setup, prompt_params: Any, *, train: bool, rng: jax.Array | None) -> jax.Array:
    return prompts.prompt_tables(
        prompt_params,
        s.config.model.virtual_prompt_style,
        s.encoder_config,
        s.task_names,
        train=train,
        rng=rng,
    )


def make_train_step(s: Setup, tx: optax.GradientTransformation):
    """A jitted step over one global batch [A, M, T] (A micro-batches of M rows each)."""

    def loss_sum(trainable, frozen, micro, rng):
        params = masking.merge(trainable, frozen)
        tables = _tables(s, params["prompt"], train=True, rng=rng)
        nll, mask = prompted.answer_nll(s.model, params["lm"], tables, micro)
        return jnp.sum(nll), jnp.sum(mask)

    value_and_grad = jax.value_and_grad(loss_sum, has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def train_step(state, frozen, batch):
        step_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        def accumulate(carry, micro_and_index):
            grads, total, count = carry
            micro, index = micro_and_index
            rng = jax.random.fold_in(step_rng, index)
            (nll_sum, n), g = value_and_grad(state["trainable"], frozen, micro, rng)
            return (jax.tree_util.tree_map(jnp.add, grads, g), total + nll_sum, count + n), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state["trainable"])
        num_micro = batch["ids"].shape[0]
        (grads, total, count), _ = jax.lax.scan(
            accumulate, (zeros, jnp.float32(0), jnp.float32(0)), (batch, jnp.arange(num_micro))
        )
        # Sums over micro-batches, divided once: the mean over every counted token of the batch.
        grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(count, 1.0), grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
        new_state = {
            **state,
            "trainable": optax.apply_updates(state["trainable"], updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        stats = {
            "loss": total / jnp.maximum(count, 1.0),
            "grad_norm": optax.tree.norm(grads),
            "loss_tokens": count,
            "real_tokens": jnp.sum(batch["attention_mask"] * batch["weight"][..., None]),
            "padded_tokens": jnp.float32(batch["ids"].size),
        }
        return new_state, stats

    return train_step


def make_eval_step(s: Setup):
    """A jitted per-row (NLL sum, token count) over one validation batch [B, T]."""

    @jax.jit
    def eval_step(trainable, frozen, batch):
        params = masking.merge(trainable, frozen)
        tables = _tables(s, params["prompt"], train=False, rng=None)
        nll, mask = prompted.answer_nll(s.model, params["lm"], tables, batch)
        return jnp.sum(nll, axis=1), jnp.sum(mask, axis=1)

    return eval_step


# --------------------------------------------------------------------------------------------
# The run


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> runs.Run:
    """Trains the new tasks' prompts; writes the run record, checkpoints, metrics, the prompt
    model and the test split's metrics; returns the Run.

    A workdir that holds a run under another config is refused (naming the changed keys)
    unless `allow_config_change`; one that holds this config's run resumes it.
    """
    workdir_path = pathlib.Path(config.exp_manager.explicit_log_dir or workdir)
    if not distributed.is_writer():
        return _train_and_evaluate(config, workdir_path, allow_config_change)
    check_writable(workdir_path)
    with files.exclusive(workdir_path, "run"):  # one run per workdir (SPEC 9)
        return _train_and_evaluate(config, workdir_path, allow_config_change)


def _train_and_evaluate(config, workdir_path, allow_config_change) -> runs.Run:
    started = time.time()
    config_checks.validate(config)
    # Checked before the model loads (a refused rerun costs nothing), written once the data
    # proved readable (a failed setup leaves no record that would refuse the fixed config).
    record = runs.run_record(config)
    changed = runs.check_record(workdir_path, record, allow_config_change=allow_config_change)
    if config.model.nemo_path:  # before any work: the end must not delete a user's folder
        check_replaceable(config.model.nemo_path)
    s = setup(config)
    if s.numerics:  # the record keeps what "auto" became on these devices
        record["numerics"] = s.numerics
    record["machine"] = machine.describe(list(s.mesh.devices.flat))  # beside its wall time
    if distributed.is_writer():
        runs.write_record(workdir_path, record, changed=bool(changed))
    trainer = config.trainer
    steps = total_steps(s)
    state, frozen, tx, schedule = init_state(s, steps)
    monitor = config.exp_manager.checkpoint_callback_params
    checkpoints = TrainCheckpoints(
        workdir_path / "checkpoints",
        save_top_k=monitor.save_top_k,
        monitor=monitor.monitor,
        mode=monitor.mode,
    )
    resume_from = trainer.resume_from_checkpoint
    if config.exp_manager.resume_if_exists and checkpoints.latest_step() is not None:
        state = checkpoints.restore(state)
        logger.info("resumed from %s at step %d", checkpoints.directory, int(state["step"]))
    elif resume_from:
        state = TrainCheckpoints(
            resume_from, save_top_k=1, monitor=monitor.monitor, mode=monitor.mode
        ).restore(state)
    log = RunLog(
        workdir_path,
        total_steps=steps,
        enabled=distributed.is_writer(),
        started=started,
        resume_step=int(state["step"]),
    )
    loop = Loop(s, frozen, tx, schedule, checkpoints, log, steps, workdir_path, record)
    with workdir_failures(workdir_path, checkpoints):
        try:
            # Jitted steps are traced under the mesh's axis rules (the activation constraints).
            with sharding.activate(s.mesh, s.rules):
                state, step, stopped = _train_loop(loop, state)
                checkpoints.wait()
                return _finish(loop, state, step, stopped)
        finally:
            log.close()
            checkpoints.close()


@dataclasses.dataclass
class Loop:
    """What the training loop's helpers share for one run (the train state apart: it moves)."""

    s: Setup
    frozen: Any  # the frozen partition: the LM and restored tasks' tables
    tx: optax.GradientTransformation
    schedule: Any  # step -> learning rate
    checkpoints: TrainCheckpoints
    log: RunLog
    steps: int  # the run's total steps
    workdir: pathlib.Path
    record: dict  # the run record (runs.run_record), written into the prompt model


def _train_loop(loop: Loop, state: dict) -> tuple[dict, int, str | None]:
    """Steps from the state's position to `loop.steps` (or the time limit); returns the last
    state, its step and why it stopped early (None when it ran to the end). SIGTERM / SIGINT
    save the state and raise Interrupted."""
    with stop_signals() as received:
        return _steps(loop, state, received)


def _steps(loop: Loop, state: dict, received: list) -> tuple[dict, int, str | None]:
    s, frozen, checkpoints, log, steps = loop.s, loop.frozen, loop.checkpoints, loop.log, loop.steps
    trainer = s.config.trainer
    train_step = make_train_step(s, loop.tx)
    eval_step = make_eval_step(s)
    interval = validation_interval(s)
    step = int(state["step"])
    if step >= steps:  # finished, or max_steps=0: no batch is ever needed
        return state, step, None
    batches = Batches(s)
    replicated = NamedSharding(s.mesh, PartitionSpec())
    deadline = time.time() + trainer.max_time_minutes * 60 if trainer.max_time_minutes else None
    epoch, index = int(state["epoch"]), int(state["batch_in_epoch"])
    # Device scalars, fetched only when logging (no per-step sync); a state saved inside a
    # logging window resumes with that window's steps, so its row logs what it would have.
    window = checkpoints.window(step)
    pending: list[dict] = list(window.stats)
    window_start = time.time() - window.elapsed_s
    while step < steps:
        state, stats = train_step(state, frozen, batches.get(epoch, index))
        step, index = step + 1, index + 1
        if index == batches.per_epoch:
            epoch, index = epoch + 1, 0
        position = {"epoch": np.int32(epoch), "batch_in_epoch": np.int32(index)}
        state.update(jax.device_put(position, replicated))
        pending.append(stats)
        timed_out = deadline is not None and time.time() > deadline
        validating = step % interval == 0 or step == steps or timed_out
        if step % trainer.log_every_n_steps == 0 or step == steps or timed_out:
            fetched = distributed.to_host(pending)
            check_finite(s, fetched, step - len(fetched) + 1, checkpoints)
            values = _step_log(fetched, time.time() - window_start)
            values.update(lr=float(loop.schedule(step - 1)), epoch=epoch)
            log.write(step, values)
            log.progress(step, values)
            pending, window_start = [], time.time()
        if validating:
            # Checked before a checkpoint can hold them (kept, now on the host, for the log).
            pending = distributed.to_host(pending)
            check_finite(s, pending, step - len(pending) + 1, checkpoints)
            paused = time.time()
            _validate_and_save(
                loop, state, eval_step, step, LogWindow(pending, paused - window_start)
            )
            window_start += time.time() - paused  # validation time is not training throughput
        if received:
            if not validating:  # the state of this step, resumable (not a best candidate)
                pending = distributed.to_host(pending)
                checkpoints.save(step, state, window=LogWindow(pending, time.time() - window_start))
            log.write(step, {"stopped": signal.Signals(received[0]).name, "max_steps": steps})
            raise Interrupted(received[0], step)
        if timed_out:
            logger.warning(
                "trainer.max_time_minutes=%s reached at step %d of %d: stopping",
                trainer.max_time_minutes,
                step,
                steps,
            )
            log.write(step, {"stopped": "max_time_minutes", "max_steps": steps})
            return state, step, "max_time_minutes"
    return state, step, None


def _step_log(fetched: list[dict], elapsed: float) -> dict[str, float]:
    def total(key: str) -> float:
        return float(sum(float(x[key]) for x in fetched))

    return {
        "loss": float(np.mean([x["loss"] for x in fetched])),
        "grad_norm": float(fetched[-1]["grad_norm"]),
        "tokens_per_s": total("padded_tokens") / elapsed,
        "real_tokens_per_s": total("real_tokens") / elapsed,
        "loss_tokens_per_s": total("loss_tokens") / elapsed,
        "steps_per_s": len(fetched) / elapsed,
    }


def _validate_and_save(
    loop: Loop, state: dict, eval_step: Any, step: int, window: LogWindow
) -> None:
    """val_loss (+ task metrics), then the checkpoint (latest, and best candidate) with the
    logging window open at `step`."""
    s, frozen, checkpoints, log = loop.s, loop.frozen, loop.checkpoints, loop.log
    start = time.time()
    values = validate_loss(s, eval_step, state["trainable"], frozen)
    params = masking.merge(state["trainable"], frozen)
    values.update(validate_tasks(s, params["lm"], frozen_tables(s, params["prompt"])))
    if values:
        values["val_time_s"] = time.time() - start
        log.write(step, values)
        logger.info("step %d: %s", step, {k: round(v, 4) for k, v in values.items()})
    bad = [k for k, v in values.items() if not np.isfinite(float(v))]
    if bad:  # never a checkpoint, let alone the best one, with a non-finite validation
        raise stop_error(s, step, f"{bad[0]} is {values[bad[0]]}", checkpoints)
    checkpoints.save(step, state, {k: float(v) for k, v in values.items()} or None, window)


def _finish(loop: Loop, state: dict, step: int, stopped: str | None) -> runs.Run:
    """Restores the best state by the monitored metric, writes the prompt model from it,
    scores the test split with it, and writes the run's result."""
    s, frozen, checkpoints, workdir = loop.s, loop.frozen, loop.checkpoints, loop.workdir
    best = checkpoints.best_step()
    if best is not None and best != step:
        state = checkpoints.restore(state, best, best=True)
        logger.info("prompt model from the best checkpoint (step %d)", best)
    params = masking.merge(state["trainable"], frozen)
    directory = pathlib.Path(s.config.model.nemo_path or workdir / "prompt_model")
    info = {"step": int(state["step"]), "best_step": best, "final_step": step}
    if distributed.is_writer():
        write_prompt_model(s, params["prompt"], directory, info, loop.record)
        logger.info("wrote %s", directory)
    test = validate_loss(
        s, make_eval_step(s), state["trainable"], frozen, s.test_examples, prefix="test"
    )
    limit = s.config.trainer.limit_test_batches * s.config.inference.batch_size
    records = spread(s.test_records, limit)
    test.update(
        validate_tasks(s, params["lm"], frozen_tables(s, params["prompt"]), records, prefix="test")
    )
    trainable = sum(
        int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state["trainable"]["prompt"])
    )
    run = runs.summarise(
        workdir,
        prompt_model=str(directory),
        final_step=step,
        best_step=best,
        test=test,
        wall_time_s=loop.log.elapsed,
        trainable_parameters=trainable,
        stopped=stopped,
    )
    if distributed.is_writer():
        if test:
            files.write_text_atomic(
                workdir / runs.TEST_METRICS_FILE, json.dumps(test, indent=1) + "\n"
            )
            logger.info("test: %s", {k: round(v, 4) for k, v in test.items()})
        runs.finish(run)
    return run
