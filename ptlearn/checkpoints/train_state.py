"""Orbax checkpoints of the full training state: the latest one (to resume) and the best k.

Saves are synchronous: the state is small (prompt parameters and their optimizer state), and
two managers saving the same step asynchronously can interleave their cross-process barriers.

`last/` always holds the most recent state, so an interrupted run resumes from it; `best/`
keeps the `save_top_k` states with the best monitored metric (val_loss by default);
`log_window/<step>.json` holds the steps of the logging window a state was saved inside, so the
resumed run logs the loss the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ptlearn import distributed
from ptlearn.errors import CheckpointError, WorkdirError
from ptlearn.files import write_text_atomic

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LogWindow:
    """The per-step training stats (host numpy scalars) since the last logged row, and the
    training seconds they took."""

    stats: list[dict[str, np.ndarray]]
    elapsed_s: float


class TrainCheckpoints:
    """The `last/` and `best/` checkpoint folders of one run."""

    def __init__(self, directory: str | pathlib.Path, *, save_top_k: int, monitor: str, mode: str):
        self.directory = pathlib.Path(directory).absolute()
        self.monitor = monitor
        self._windows = self.directory / "log_window"  # LogWindow files, one per resumable step
        self.last = ocp.CheckpointManager(
            self.directory / "last",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, enable_async_checkpointing=False
            ),
        )
        self.best = ocp.CheckpointManager(
            self.directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=save_top_k,
                best_fn=lambda metrics: metrics[monitor],
                best_mode=mode,
                create=True,
                enable_async_checkpointing=False,
            ),
        )

    def save(
        self,
        step: int,
        state: Any,
        metrics: dict[str, float] | None = None,
        window: LogWindow | None = None,
    ) -> None:
        """Saves `state` as the latest; also as a best candidate when `metrics` has the monitor;
        `window` is the logging window open at `step` (its host stats, not yet logged).

        A checkpoint folder removed under the run is an error: orbax would quietly recreate it,
        and the run would end "successfully" without its record and metrics."""
        if not self.directory.is_dir():
            raise WorkdirError(
                f"{self.directory} was removed during the run, with the checkpoints it held: "
                "nothing is safe to resume from; rerun from the start"
            )
        # Written first: a kill between the two leaves a window that no checkpoint's step names.
        self._save_window(step, window)
        self.last.save(step, args=ocp.args.StandardSave(state), force=True)
        self._prune_windows(keep=step)
        if metrics is not None and self.monitor in metrics:
            self.best.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
        self.wait()

    def wait(self) -> None:
        """Blocks until pending writes are on disk."""
        self.last.wait_until_finished()
        self.best.wait_until_finished()

    def latest_step(self) -> int | None:
        """The step of the resumable state, or None."""
        return self.last.latest_step()

    def best_step(self) -> int | None:
        """The step of the best state by the monitored metric, or None."""
        return self.best.best_step()

    def restore(self, abstract_state: Any, step: int | None = None, *, best: bool = False) -> Any:
        """Restores into the structure, shapes and shardings of `abstract_state`."""
        manager = self.best if best else self.last
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{manager.directory}: holds no checkpoint to restore")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax raises many kinds on damaged or mismatched folders
            raise CheckpointError(
                f"{manager.directory}/{step}: the checkpoint cannot be restored ({err}); it is "
                "damaged or from a different configuration: delete it, or start a new run with "
                "exp_manager.resume_if_exists=False or another --workdir"
            ) from err

    def window(self, step: int) -> LogWindow:
        """The logging window saved with the state of `step` (empty when none was open)."""
        path = self._windows / f"{step}.json"
        if not path.is_file():
            return LogWindow([], 0.0)
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            stats = [
                {k: np.asarray(v, dtype=dtype) for k, (v, dtype) in row.items()}
                for row in saved["stats"]
            ]
            return LogWindow(stats, float(saved["elapsed_s"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{path}: the logging window saved with step {step} cannot be read ({err}); "
                "delete the file (the first logged loss after the resume then averages fewer "
                "steps)"
            ) from err

    def _save_window(self, step: int, window: LogWindow | None) -> None:
        if not distributed.is_writer() or window is None or not window.stats:
            return
        rows = [{k: [v.item(), str(v.dtype)] for k, v in row.items()} for row in window.stats]
        text = json.dumps({"stats": rows, "elapsed_s": window.elapsed_s})
        self._windows.mkdir(exist_ok=True)
        write_text_atomic(self._windows / f"{step}.json", text)

    def _prune_windows(self, keep: int) -> None:
        """Only the latest state resumes, so only its window is kept."""
        if distributed.is_writer() and self._windows.is_dir():
            for path in self._windows.glob("*.json"):
                if path.stem != str(keep):
                    path.unlink(missing_ok=True)

    def close(self) -> None:
        """Finishes writes and releases the managers."""
        self.last.close()
        self.best.close()
