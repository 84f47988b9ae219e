"""What a training run reports: `metrics.jsonl`, TensorBoard summaries, and its progress on the
console (tqdm's bar on a terminal; one readable line per logged step in a SLURM log or a
notebook, where a redrawn bar would be noise).

Only the process that writes (process 0 in a multi-host run) creates a RunLog with `enabled`.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import sys
import time
from typing import Any

from ptlearn.files import write_text_atomic

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class RunLog:
    """Appends one JSON object per logged step / validation; mirrors scalars to TensorBoard.

    Every row carries `elapsed_s`, the run's wall time so far summed over resumed sessions.
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        *,
        total_steps: int,
        enabled: bool = True,
        started: float | None = None,
        resume_step: int = 0,
    ):
        self.enabled = enabled
        self.total_steps = total_steps
        # The run's clock: this session's start (default now) less the earlier sessions' time
        # (all of it, the work redone after a kill included; none for a run from step 0).
        earlier = self.previous_elapsed(workdir) if resume_step else 0.0
        self.start = (started or time.time()) - earlier
        self.bar = None
        if not enabled:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._keep_rows_up_to(workdir, resume_step)
        self.metrics_file = open(workdir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)

    @staticmethod
    def _keep_rows_up_to(workdir: pathlib.Path, step: int) -> None:
        """Drops the rows a resumed run is about to log again (those past its checkpoint), so
        metrics.jsonl holds each step once."""
        rows = read_metrics(workdir)
        kept = [r for r in rows if int(r.get("step", 0)) <= step]
        if len(kept) != len(rows):
            text = "".join(json.dumps(r) + "\n" for r in kept)
            write_text_atomic(workdir / METRICS_FILE, text)

    @staticmethod
    def previous_elapsed(workdir: str | pathlib.Path) -> float:
        """The last `elapsed_s` in the workdir's metrics.jsonl (0 for a new run)."""
        return max(
            (float(r["elapsed_s"]) for r in read_metrics(workdir) if "elapsed_s" in r), default=0.0
        )

    def write(self, step: int, values: dict[str, Any]) -> None:
        """Records `values` at `step` (floats go to TensorBoard too)."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: plain(v) for k, v in values.items()}}
        record["elapsed_s"] = round(self.elapsed, 3)
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self.tensorboard.add_scalar(key, value, int(step))
        self.tensorboard.flush()

    def progress(self, step: int, values: dict[str, Any]) -> None:
        """Moves the bar to `step`, or logs one line: step, loss, lr, throughput, ETA."""
        if not self.enabled:
            return
        loss = values.get("loss")
        if self.bar is not None:
            if self.bar.n == 0 and step > 1:
                self.bar.reset(total=self.total_steps)
                self.bar.update(step)  # resumed: the bar starts where the run is
            else:
                self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        rate = values.get("steps_per_s") or 0.0
        remaining = (self.total_steps - step) / rate if rate > 0 else float("nan")
        eta = _clock(remaining) if math.isfinite(remaining) else "?"
        logger.info(
            "step %d/%d loss %.4f lr %.2e %.0f tokens/s ETA %s",
            step,
            self.total_steps,
            loss if loss is not None else float("nan"),
            values.get("lr", float("nan")),
            values.get("real_tokens_per_s", float("nan")),
            eta,
        )

    @property
    def elapsed(self) -> float:
        """Wall time of the run so far, summed over its sessions."""
        return time.time() - self.start

    def close(self) -> None:
        """Flushes and closes the files."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.metrics_file.close()
        self.tensorboard.close()


def console_logging(level: str | None = "warning", *, command: bool = True) -> None:
    """ptlearn's INFO lines on stderr as `HH:MM:SS message`. For a command (`python -m
    ptlearn.X`, whose module logs as "__main__") also jax, orbax and absl (orbax logs through
    absl) only from `level` up; from Python (`command=False`) the caller's own logging set-up
    of everything but the "ptlearn" logger is left alone. Idempotent."""
    level = level or "warning"
    names = ["ptlearn"]
    if command:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(level)
        for name in ("absl", "jax", "orbax"):
            logging.getLogger(name).setLevel(level.upper())
        names.append("__main__")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    for name in names:
        own = logging.getLogger(name)
        own.setLevel(min(logging.INFO, logging.getLevelName(level.upper())))
        if not any(getattr(h, "_ptlearn", False) for h in own.handlers):
            handler._ptlearn = True
            own.addHandler(handler)
            own.propagate = False


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The rows of `metrics.jsonl`; a line torn by a killed run is left out."""
    path = pathlib.Path(workdir) / METRICS_FILE
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def plain(value: Any) -> Any:
    """A numpy / JAX scalar as a plain number (for JSON); anything else as it is."""
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        return value.item()
    return value
