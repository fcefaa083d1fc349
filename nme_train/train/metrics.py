"""Where metrics go: JSON lines, TensorBoard, and a progress line on the console.

Only the main process (index 0) writes. `DIR/metrics.jsonl` holds one JSON
object per line, each with `step` and keys such as `train/loss`. In a local
workdir the file is opened in append mode and flushed after each line, so a
crash loses nothing that was written. In a bucket (no append) the object is
rewritten whole at most every `flush_secs` and at every checkpoint save
(`MetricWriter.flush`), so the lines up to a checkpoint are stored before it;
TensorBoard's events files likewise (`ObjectRecordWriter`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from absl import logging

from nme_train import storage
from nme_train.train.rundir import read_jsonl


def _plain(value: Any) -> Any:
    """numpy / jax scalars -> Python numbers for JSON."""
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


HPARAM_METRICS = ("eval/accuracy", "eval/loss", "train/loss")  # the scalars hparams compare


class LineLog:
    """Appends lines to a file: locally each line at once (append, flush); in a bucket the
    whole object is rewritten when `flush_secs` have passed since the last upload, and at
    `flush()` and `close()`."""

    def __init__(self, path: str, flush_secs: float):
        self.path, self.flush_secs = path, flush_secs
        self.remote = storage.is_remote(path)
        self._file = None
        if self.remote:
            try:
                self._text = storage.read_text(path)
            except FileNotFoundError:
                self._text = ""
            self._dirty, self._uploaded = False, time.monotonic()
        else:
            self._file = open(path, "a", encoding="utf-8")

    def write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
            return
        self._text += line
        self._dirty = True
        if time.monotonic() - self._uploaded >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        if self.remote and self._dirty:
            storage.write_text(self.path, self._text)
            self._dirty, self._uploaded = False, time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()


class ObjectRecordWriter:
    """tensorboardX's record writer for an events file in a bucket: the records are kept
    and the object rewritten whole at each flush (tensorboardX flushes every flush_secs;
    its own gs:// writer needs google-cloud-storage credentials at import and fails)."""

    def __init__(self, path: str):
        self.path, self._data, self._dirty = path, bytearray(), False

    def write(self, data: bytes) -> None:
        self._data += data
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            storage.write_text(self.path, self._data)
            self._dirty = False

    def close(self) -> None:
        self.flush()


class _ObjectWriterFactory:
    def open(self, path: str) -> ObjectRecordWriter:
        return ObjectRecordWriter(path)

    def directory_check(self, path: str) -> None:
        pass  # a bucket needs no directories


def _tensorboard_writer(logdir: str, flush_secs: int):
    """tensorboardX's SummaryWriter for `logdir` (local or in a bucket), or None when
    tensorboardX is missing (TensorBoard output is optional)."""
    try:
        from tensorboardX import SummaryWriter, record_writer
    except ImportError:
        return None
    scheme = storage.url_scheme(logdir)
    if scheme:
        record_writer.register_writer_factory(scheme, _ObjectWriterFactory())
    return SummaryWriter(logdir, flush_secs=flush_secs)


class MetricWriter:
    """Appends metrics to DIR/metrics.jsonl and DIR/tensorboard/ (main process only).

    `tensorboard_subdir` writes the events into DIR/tensorboard/<subdir>/, a
    run of its own beside the training curves (the offline prober's);
    `jsonl=False` writes no metrics.jsonl.
    """

    def __init__(self, workdir: str, enabled: bool = True, *, jsonl: bool = True,
                 tensorboard_subdir: str = "", flush_secs: int = 30):
        self.enabled = enabled
        self._tb = None
        self._file = None
        self._probe_layout = False
        if not enabled:
            return
        storage.makedirs(workdir)
        self.path = os.path.join(workdir, "metrics.jsonl")
        if jsonl:
            self._file = LineLog(self.path, flush_secs)
        self._tb = _tensorboard_writer(os.path.join(workdir, "tensorboard", tensorboard_subdir),
                                       flush_secs)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, int(step))

    def write_config(self, config: Mapping[str, Any], step: int = 0) -> None:
        """The run's config to TensorBoard: as text (the JSON), and as hparams (every leaf
        field, tuples as text) with eval/accuracy, eval/loss and train/loss as metrics."""
        if not self.enabled or self._tb is None:
            return
        from flax.traverse_util import flatten_dict
        from tensorboardX.summary import hparams

        text = json.dumps(config, indent=2)
        self._tb.add_text("config", "    " + text.replace("\n", "\n    "), int(step))
        flat = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
                for k, v in flatten_dict(dict(config), sep=".").items()}
        for summary in hparams(flat, {k: 0.0 for k in HPARAM_METRICS}):
            self._tb.file_writer.add_summary(summary, int(step))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """TensorBoard only (e.g. probe figures, which have their own JSON file)."""
        if self.enabled and self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, int(step))

    def probe_record(self, record: Mapping[str, Any]) -> None:
        """A curvature probe record to TensorBoard: every eigenvalue and error bound, the
        traces with a one-SE margin (custom scalars), per-layer traces, and the SLQ
        densities as histograms (probability mass over the eigenvalue grid)."""
        if not self.enabled or self._tb is None:
            return
        from nme_train.curvature.operators import kind_label
        from nme_train.curvature.probes import densities, record_kinds, scalars

        step = int(record["step"])
        values = scalars(record)
        self.scalars(step, values)
        for tag, (grid, mass, edges) in densities(record).items():
            self._tb.add_histogram_raw(
                tag, min=float(grid[0]), max=float(grid[-1]), num=float(mass.sum()),
                sum=float(mass @ grid), sum_squares=float(mass @ grid**2),
                bucket_limits=edges.tolist(), bucket_counts=mass.tolist(), global_step=step)
        if not self._probe_layout:
            margins = {f"tr {kind_label(kind)}": ["Margin", [
                f"probes/{kind}/trace", f"probes/{kind}/trace_lo", f"probes/{kind}/trace_hi"]]
                for kind in record_kinds(record) if f"probes/{kind}/trace_lo" in values}
            if margins:
                self._tb.add_custom_scalars({"curvature traces (mean ± SE)": margins})
                self._probe_layout = True
        self._tb.flush()

    def flush(self) -> None:
        """Stores every line and event written so far (before a checkpoint is saved)."""
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str, name: str = "metrics") -> list[dict]:
    """All records of DIR/<name>.jsonl (for tests, tools and notebooks); [] when missing."""
    return read_jsonl(os.path.join(workdir, f"{name}.jsonl"))


# Dense bf16 peak FLOP/s per chip, from the vendors' specifications; matched against
# jax's device_kind. MFU is reported only for these (and never on CPU).
PEAK_BF16_FLOPS = (
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5", 197e12), ("TPU v4", 275e12),
)


def peak_flops(device_kind: str) -> float | None:
    """The bf16 peak FLOP/s of a device kind ('NVIDIA H200', 'TPU v5 lite'), if known."""
    for name, flops in PEAK_BF16_FLOPS:
        if name.lower() in device_kind.lower():
            return flops
    return None


class Progress:
    """One console line per log interval: step, loss, throughput, MFU and ETA.

    With `set_flops` the rates include `train/tflops_per_sec_per_device`
    (XLA's FLOP count of the compiled step, all of its work) and, on devices
    of known peak, `train/mfu`: model FLOPs (3x the forward pass, as MaxText
    and big_vision count them, so a regularizer's extra passes do not count)
    per second and device over the dense bf16 peak, and `train/hfu`, the
    same for the step's own FLOPs.
    """

    def __init__(self, total_steps: int, batch_size: int, enabled: bool = True):
        self.total = total_steps
        self.batch_size = batch_size
        self.enabled = enabled
        self._last_time: float | None = None
        self._last_step = 0
        self._flops_per_device = 0.0
        self._model_flops_per_device = 0.0
        self._peak: float | None = None

    def set_flops(self, step_flops: float, devices: list,
                  model_flops: Callable[[], float] | None = None) -> None:
        """The step's FLOPs (all devices); `model_flops` is asked only where MFU is reported
        (devices of known peak), as it costs a trace of the forward pass."""
        if not devices or not step_flops > 0:
            return
        self._flops_per_device = step_flops / len(devices)
        self._peak = peak_flops(devices[0].device_kind)
        if self._peak and model_flops is not None:
            self._model_flops_per_device = model_flops() / len(devices)

    def start(self, step: int) -> None:
        self._last_time, self._last_step = time.perf_counter(), step

    def rates(self, step: int) -> dict[str, float]:
        """Steps/s and examples/s since the previous call (and resets the window)."""
        now = time.perf_counter()
        elapsed = max(now - (now if self._last_time is None else self._last_time), 1e-9)
        steps_per_sec = (step - self._last_step) / elapsed
        self._last_time, self._last_step = now, step
        rates = {"train/steps_per_sec": steps_per_sec,
                 "train/examples_per_sec": steps_per_sec * self.batch_size}
        if self._flops_per_device:
            achieved = steps_per_sec * self._flops_per_device
            rates["train/tflops_per_sec_per_device"] = achieved / 1e12
            if self._peak:
                rates["train/hfu"] = achieved / self._peak
                if self._model_flops_per_device:
                    rates["train/mfu"] = steps_per_sec * self._model_flops_per_device / self._peak
        return rates

    def line(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Logs a training line (with throughput and ETA) or an evaluation line."""
        if not self.enabled:
            return
        if "eval/accuracy" in metrics:
            logging.info("eval at step %d | loss %.4f | accuracy %.4f", step,
                         float(metrics["eval/loss"]), float(metrics["eval/accuracy"]))
            return
        sps = metrics.get("train/steps_per_sec", 0.0)
        eta = datetime.timedelta(seconds=round((self.total - step) / sps)) if sps else "?"
        compute = ""
        if "train/mfu" in metrics:
            compute = f" | MFU {100 * metrics['train/mfu']:.1f}%"
        elif "train/tflops_per_sec_per_device" in metrics:
            compute = f" | {metrics['train/tflops_per_sec_per_device']:.3g} TFLOP/s/device"
        logging.info("step %d/%d | loss %.4f | acc %.3f | %.1f steps/s | %.0f ex/s%s | ETA %s",
                     step, self.total, float(metrics["train/loss"]),
                     float(metrics["train/accuracy"]), sps,
                     metrics.get("train/examples_per_sec", 0.0), compute, eta)


def truncate_metrics(workdir: str, step: int, name: str = "metrics") -> int:
    """Keeps the records of steps <= `step` in DIR/<name>.jsonl (a run resuming from `step`).

    Later records (written after the checkpoint, before the run died) are
    moved to DIR/<name>.discarded.jsonl, not deleted. Returns how many moved.
    """
    path = os.path.join(workdir, f"{name}.jsonl")
    try:
        lines = [line + "\n" for line in storage.read_text(path).splitlines() if line.strip()]
    except FileNotFoundError:
        return 0
    keep = [line for line in lines if json.loads(line)["step"] <= step]
    drop = [line for line in lines if json.loads(line)["step"] > step]
    if drop:
        storage.append_text(os.path.join(workdir, f"{name}.discarded.jsonl"), "".join(drop))
        storage.write_text(path, "".join(keep))
    return len(drop)


class Diverged(FloatingPointError):
    """The training loss became non-finite at `step`."""

    def __init__(self, step: int, loss: float, message: str):
        super().__init__(message)
        self.step, self.loss = step, loss


class TrainMetrics:
    """Host side of the training metrics: checks, interval means, and where they go.

    `record(step, values)` takes the fetched metrics of one step. The values
    since the last log line (the window) are part of a checkpoint, so a
    resumed run writes exactly the lines an uninterrupted run would.
    """

    def __init__(self, writer: MetricWriter, progress: Progress, log_every: int,
                 total_steps: int, workdir: str,
                 extra: Callable[[], dict[str, float]] | None = None):
        self.writer, self.progress = writer, progress
        self.extra = extra  # more figures for each line (where the time went)
        self.log_every, self.total = log_every, total_steps
        self.workdir = workdir
        self.window: dict[str, list[float]] = {}
        self.last: dict[str, float] = {}
        self.last_loss: float | None = None  # the training loss of the latest step
        self._timed_from: int | None = None

    def record(self, step: int, values: Mapping[str, Any]) -> None:
        loss = float(values["loss"])
        if not math.isfinite(loss):
            raise Diverged(step, loss, f"training loss is {loss} at step {step}")
        self.last_loss = loss
        for key, value in values.items():
            self.window.setdefault(key, []).append(float(value))
        if self._timed_from is None:  # the first step of a process includes compilation
            self._timed_from = step
            self.progress.start(step)
        if (self.log_every and step % self.log_every == 0) or step == self.total:
            line = {f"train/{k}": float(np.mean(v)) for k, v in self.window.items()}
            if step > self._timed_from:
                line.update(self.progress.rates(step))
            if self.extra is not None:
                line.update(self.extra())
            self.writer.write(step, line)
            self.progress.line(step, line)
            self.last.update(line)
            self.window = {}

    def flush(self, step: int) -> None:
        """Writes the means of the steps since the last line as the line of `step`."""
        if self.window and step > 0:
            line = {f"train/{k}": float(np.mean(v)) for k, v in self.window.items()}
            self.writer.write(step, line)
            self.last.update(line)
            self.window = {}

    def restart_timing(self, step: int) -> None:
        """Excludes what happened before `step` (an evaluation) from the throughput."""
        self.progress.start(step)
