"""A run's global batches and step counts: the batch at any (epoch, index) is a pure function
of the data seed and that position (what makes resumption exact), placed on the mesh."""

from __future__ import annotations

import jax
import numpy as np

from ptlearn import config_lib, distributed, sharding
from ptlearn.data import batching
from ptlearn.errors import DataError
from ptlearn.train_setup import Setup


def _steps_per_epoch(s: Setup) -> int:
    global_batch = s.config.model.global_batch_size
    count = len(s.train_examples) // global_batch
    if count == 0:
        raise DataError(
            f"model.data.train_ds: {len(s.train_examples)} usable examples, fewer than one "
            f"global batch of {global_batch}; add data or lower model.global_batch_size"
        )
    return count


def validation_interval(s: Setup) -> int:
    """Steps between validations: trainer.val_check_interval, or trainer.val_check_epochs of
    an epoch when that is set (at least one step)."""
    trainer = s.config.trainer
    if trainer.val_check_epochs > 0:
        return max(1, round(trainer.val_check_epochs * _steps_per_epoch(s)))
    return int(trainer.val_check_interval)


def total_steps(s: Setup) -> int:
    """trainer.max_steps (0: none, only the initial prompt is scored), or max_epochs worth of
    whole global batches."""
    if s.config.trainer.max_steps >= 0:
        return int(s.config.trainer.max_steps)
    return int(s.config.trainer.max_epochs) * _steps_per_epoch(s)


class Batches:
    """The global batch at any (epoch, index): a pure function of seed and position."""

    def __init__(self, s: Setup):
        self.s = s
        self.task_index = {t: i for i, t in enumerate(s.task_names)}
        self.lengths = [len(e.ids) for e in s.train_examples]
        self.per_epoch = _steps_per_epoch(s)
        weights = config_lib.as_tuple(s.config.model.data.train_task_weights)
        # No weights: each task by its example count, every example once an epoch (no pool).
        self.task_of: np.ndarray | None = None
        self.task_weights = weights
        if weights:
            self.task_of = np.asarray([s.new_tasks.index(e.taskname) for e in s.train_examples])
            for t, (task, weight) in enumerate(zip(s.new_tasks, weights, strict=True)):
                if weight > 0 and not np.any(self.task_of == t):
                    raise DataError(
                        f"model.data.train_task_weights gives task {task!r} weight {weight} "
                        "but model.data.train_ds has no usable example of it; add its data "
                        "or give it weight 0"
                    )
        self._epoch: int | None = None
        self._order: list[np.ndarray] = []
        self.batch_sharding = sharding.batch_sharding(s.mesh, s.rules, micro_batched=True)
        self.row_sharding = sharding.batch_sharding(s.mesh, s.rules)

    def get(self, epoch: int, index: int) -> dict[str, jax.Array]:
        """Global batch arrays [A, M, ...] on the mesh; this process collates only its rows."""
        m = self.s.config.model
        if epoch != self._epoch:
            self._order = batching.epoch_batches(
                self.lengths,
                m.global_batch_size,
                seed=m.data.seed,
                epoch=epoch,
                shuffle=m.data.shuffle,
                pool=None
                if self.task_of is None
                else batching.mixture_pool(
                    self.task_of, self.task_weights, seed=m.data.seed, epoch=epoch
                ),
            )
            self._epoch = epoch
        order = self._order[index]
        grid = order.reshape(self.s.accumulation, -1)  # [A, M]: micro-batches of the step
        rows = distributed.process_batch_slice(grid.shape[1], sharding=self.row_sharding)
        examples = [self.s.train_examples[i] for i in order]
        # Shapes come from the whole global batch, so every process builds the same ones.
        length, num_targets = batching.batch_shape(examples, m.max_seq_length)
        local = grid[:, rows]
        batch = batching.collate(
            [self.s.train_examples[i] for i in local.reshape(-1)],
            self.task_index,
            batch_size=local.size,
            max_length=m.max_seq_length,
            pad_id=self.s.loaded.tokenizer.fill_id,
            length=length,
            num_targets=num_targets,
        )
        batch = batching.split_micro_batches(batch, self.s.accumulation)
        return distributed.host_local_to_global(batch, self.s.mesh, self.batch_sharding)
