"""Where metrics go: JSON lines, TensorBoard, and a progress line on the console.

Only the main process (index 0) writes. `DIR/metrics.jsonl` holds one JSON
object per line, each with `step` and keys such as `train/loss`; the file is
opened in append mode and flushed after each line, so a crash loses nothing
that was written.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    """numpy / jax scalars -> Python numbers for JSON."""
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricWriter:
    """Appends metrics to DIR/metrics.jsonl and DIR/tensorboard/ (main process only)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._file = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)
        except ImportError:  # TensorBoard output is optional
            self._tb = None

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All records of DIR/metrics.jsonl (for tests, tools and notebooks)."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """One console line per log interval: step, loss, throughput and ETA."""

    def __init__(self, total_steps: int, batch_size: int, enabled: bool = True,
                 stream=sys.stdout):
        self.total = total_steps
        self.batch_size = batch_size
        self.enabled = enabled
        self.stream = stream
        self._last_time: float | None = None
        self._last_step = 0

    def start(self, step: int) -> None:
        self._last_time, self._last_step = time.perf_counter(), step

    def rates(self, step: int) -> dict[str, float]:
        """Steps/s and examples/s since the previous call (and resets the window)."""
        now = time.perf_counter()
        elapsed = max(now - (self._last_time or now), 1e-9)
        steps_per_sec = (step - self._last_step) / elapsed
        self._last_time, self._last_step = now, step
        return {"train/steps_per_sec": steps_per_sec,
                "train/examples_per_sec": steps_per_sec * self.batch_size}

    def line(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Prints a training line (with throughput and ETA) or an evaluation line."""
        if not self.enabled:
            return
        if "eval/accuracy" in metrics:
            print(f"eval at step {step} | loss {float(metrics['eval/loss']):.4f} | accuracy "
                  f"{float(metrics['eval/accuracy']):.4f}", file=self.stream, flush=True)
            return
        sps = metrics.get("train/steps_per_sec", 0.0)
        eta = datetime.timedelta(seconds=round((self.total - step) / sps)) if sps else "?"
        print(f"step {step}/{self.total} | loss {float(metrics['train/loss']):.4f} | acc "
              f"{float(metrics['train/accuracy']):.3f} | {sps:.1f} steps/s | "
              f"{metrics.get('train/examples_per_sec', 0.0):.0f} ex/s | ETA {eta}",
              file=self.stream, flush=True)
