"""What stops a training run cleanly: SIGTERM / SIGINT (preemption) and a non-finite loss,
gradient norm or validation metric. The loop in training.py calls these."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ptlearn.errors import TrainingError


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived (preemption under SLURM / Kubernetes, Ctrl-C): the state at
    `step` is checkpointed and the run stops; rerunning it resumes from there."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} at step {step}: checkpoint saved; rerun the same command to resume"
        )


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """Collects SIGTERM / SIGINT while training instead of dying mid-step (main thread only:
    Python delivers signals there)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {
        signum: signal.signal(signum, lambda number, _: received.append(number))
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_error(s: Any, step: int, what: str, checkpoints: Any) -> TrainingError:
    last = checkpoints.latest_step()
    o = s.config.model.optim
    return TrainingError(
        f"step {step}: {what}; the run stops without saving it (last good checkpoint: "
        + (f"step {last}" if last is not None else "none")
        + f"). Lower model.optim.lr (now {o.lr}) or set trainer.gradient_clip_val (now "
        f"{s.config.trainer.gradient_clip_val}), then rerun: it resumes from that checkpoint"
        + (" (with --allow_config_change)" if last is not None else "")
    )


def check_finite(s: Any, fetched: list[dict], first_step: int, checkpoints) -> None:
    """Stops the run at the first step whose loss or gradient norm is not finite."""
    for offset, stats in enumerate(fetched):
        for key in ("loss", "grad_norm"):
            if not np.isfinite(float(stats[key])):
                raise stop_error(
                    s, first_step + offset, f"the {key} is {float(stats[key])}", checkpoints
                )
