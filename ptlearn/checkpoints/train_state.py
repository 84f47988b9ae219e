"""Orbax checkpoints of the full training state: the latest one (to resume) and the best k.

Saves are synchronous: the state is small (prompt parameters and their optimizer state), and
two managers saving the same step asynchronously can interleave their cross-process barriers.

`last/` always holds the most recent state, so an interrupted run resumes from it; `best/`
keeps the `save_top_k` states with the best monitored metric (val_loss by default).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from ptlearn.errors import CheckpointError, WorkdirError

logger = logging.getLogger(__name__)


class TrainCheckpoints:
    """The `last/` and `best/` checkpoint folders of one run."""

    def __init__(self, directory: str | pathlib.Path, *, save_top_k: int, monitor: str, mode: str):
        self.directory = pathlib.Path(directory).absolute()
        self.monitor = monitor
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

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
        """Saves `state` as the latest; also as a best candidate when `metrics` has the monitor.

        A checkpoint folder removed under the run is an error: orbax would quietly recreate it,
        and the run would end "successfully" without its record and metrics."""
        if not self.directory.is_dir():
            raise WorkdirError(
                f"{self.directory} was removed during the run, with the checkpoints it held: "
                "nothing is safe to resume from; rerun from the start"
            )
        self.last.save(step, args=ocp.args.StandardSave(state), force=True)
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

    def close(self) -> None:
        """Finishes writes and releases the managers."""
        self.last.close()
        self.best.close()
