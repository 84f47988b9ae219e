"""What a training run reports: `metrics.jsonl`, TensorBoard summaries, a terminal progress bar.

Only the process that writes (process 0 in a multi-host run) creates a RunLog with `enabled`.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any


class RunLog:
    """Appends one JSON object per logged step / validation; mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str | pathlib.Path, *, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.start = time.time()
        self.start_step: int | None = None
        self.interactive = enabled and sys.stderr.isatty()
        if not enabled:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_file = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        """Records `values` at `step` (floats go to TensorBoard too)."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self.tensorboard.add_scalar(key, value, int(step))
        self.tensorboard.flush()

    def progress(self, step: int, loss: float | None = None) -> None:
        """Redraws a one-line progress bar with ETA when stderr is a terminal."""
        if not self.interactive:
            return
        if self.start_step is None:
            self.start_step = step
            self.start = time.time()
        done = step - self.start_step
        elapsed = time.time() - self.start
        remaining = (self.total_steps - step) * elapsed / done if done else float("nan")
        width = 30
        filled = int(width * step / max(self.total_steps, 1))
        bar = "#" * filled + "-" * (width - filled)
        loss_text = f" loss {loss:.4f}" if loss is not None else ""
        eta = _clock(remaining) if math.isfinite(remaining) else "?"
        sys.stderr.write(f"\r[{bar}] {step}/{self.total_steps}{loss_text} ETA {eta}  ")
        sys.stderr.flush()

    def close(self) -> None:
        """Flushes and closes the files."""
        if not self.enabled:
            return
        if self.interactive:
            sys.stderr.write("\n")
        self.metrics_file.close()
        self.tensorboard.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        return value.item()
    return value
