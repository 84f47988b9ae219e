"""What stops a training run cleanly: SIGTERM / SIGINT (preemption), a non-finite loss,
gradient norm or validation metric, and a workdir that can no longer be written. The loop in
training.py calls these."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ptlearn.errors import PtlearnError, TrainingError, WorkdirError


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


# Less than this free is "full": a checkpoint of a prompt model needs at least a few MB.
FULL_BYTES = 4 * 2**20


def unwritable(folder: pathlib.Path, err: BaseException | None = None) -> str | None:
    """Why `folder` cannot take a write ('removed', 'read-only', 'full'), or None when it can
    (an error unrelated to the disk). `err`, when given, is the failure to explain."""
    code = getattr(err, "errno", None)
    if not folder.is_dir() or code == errno.ENOENT:
        return "removed"
    if code == errno.EROFS or not os.access(folder, os.W_OK):
        return "read-only"
    if code in (errno.ENOSPC, errno.EDQUOT) or shutil.disk_usage(folder).free < FULL_BYTES:
        return "full"
    return None


def check_writable(workdir: pathlib.Path) -> None:
    """Refuses, before any work, a workdir that cannot be created or written."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise WorkdirError(
            f"workdir {workdir} cannot be written ({err.strerror}); nothing ran: give a "
            "writable --workdir"
        ) from None
    if unwritable(workdir) == "full":
        raise WorkdirError(
            f"workdir {workdir}: its disk has {shutil.disk_usage(workdir).free} bytes free; "
            "nothing ran: free some space or give another --workdir"
        )


@contextlib.contextmanager
def workdir_failures(workdir: pathlib.Path, checkpoints: Any) -> Iterator[None]:
    """Turns a failed write into one WorkdirError saying what went wrong and which checkpoint
    is safe to resume from; other errors pass unchanged."""
    try:
        yield
    except PtlearnError:  # already one located line
        raise
    except Exception as err:  # orbax wraps OSErrors in its own kinds: diagnose the disk
        why = unwritable(workdir, err if isinstance(err, OSError) else None)
        if why is None:
            raise
        try:
            last = checkpoints.latest_step() if why != "removed" else None
        except Exception:  # the folder it would read is what failed
            last = None
        safe = (
            f"the last complete checkpoint is step {last}: fix it and rerun the same command "
            "to resume from there"
            if last is not None
            else "no checkpoint is safe to resume from: fix it and rerun from the start"
        )
        became = {"removed": "was removed", "read-only": "became read-only", "full": "is full"}
        raise WorkdirError(
            f"workdir {workdir} {became[why]} during the run ({type(err).__name__}: "
            f"{str(err)[:200]}); {safe}"
        ) from err
