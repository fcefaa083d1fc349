"""Profiler traces of chosen training steps, from the config or on request while a job runs.

A trace of steps [s, s + n) is written by `jax.profiler` into the run's TensorBoard
directory, where TensorBoard's profile plugin finds it
(`WORKDIR/tensorboard/plugins/profile/<run>/<host>.xplane.pb`; `tensorboard --logdir
WORKDIR/tensorboard`, tab "Profile"). Two ways to ask for one:

  the config     `config.profile.start_step` (>= 0) and `config.profile.num_steps`;
  a request      a running job looks for WORKDIR/profile_request.json at most every
                 `config.profile.poll_seconds` at a step boundary (as `nme-probe --watch`
                 follows a job, the request needs no restart); `nme-profile --workdir DIR
                 --steps N` writes one ({"steps": N}). The trace starts at the next step;
                 the request file is removed.

Each trace is recorded as a line of WORKDIR/profiles.jsonl: the steps traced, where the
trace is, what asked for it (and when: `request_time`, `start_time`, seconds since the
epoch) and the wall time the trace took. Each step is annotated (`StepTraceAnnotation`
"train", its step number), which the profile plugin's step-time view reads. In a multi-process job
every process traces its own host, and process 0's poll decides for all of them (a
broadcast); the processes must poll at the same steps, so there the poll is at each log
line (`config.log_every_steps`) instead of by the clock. The steps are waited for before
the trace stops, so the trace holds their device work.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax

from nme_train import storage

REQUEST_FILE = "profile_request.json"
RECORD_FILE = "profiles.jsonl"
PROFILE_SUBDIR = os.path.join("plugins", "profile")


def request_profile(workdir: str, steps: int) -> str:
    """Asks the job writing `workdir` for a trace of its next `steps` steps; returns the
    request's path."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    path = os.path.join(workdir, REQUEST_FILE)
    storage.write_text(path, json.dumps({"steps": steps, "time": time.time()}))
    return path


def read_profiles(workdir: str) -> list[dict]:
    """The traces taken so far (WORKDIR/profiles.jsonl)."""
    path = os.path.join(workdir, RECORD_FILE)
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


class Profiler:
    """The trainer's profiler: `before_step(step)` and `after_step(done, state)` around each
    step (see the module docstring)."""

    def __init__(self, settings: Any, workdir: str, log_dir: str, is_main: bool,
                 multiprocess: bool, poll_every_steps: int = 1):
        self.workdir, self.log_dir = workdir, log_dir
        self.is_main, self.multiprocess = is_main, multiprocess
        self.poll_every_steps = max(1, int(poll_every_steps))
        self.poll_seconds = float(settings.poll_seconds)
        self.default_steps = int(settings.num_steps)
        start = int(settings.start_step)
        self.pending: tuple[int, int, dict] | None = (
            (start, self.default_steps, {"source": "config"}) if start >= 0 else None)
        self.active: dict | None = None
        self.last_poll = 0.0

    def before_step(self, step: int) -> None:
        """Starts a trace that is due at `step` (the index of the step about to run)."""
        if self.active is not None or self.pending is None or step < self.pending[0]:
            return
        _, steps, origin = self.pending
        self.pending = None
        before = set(self._runs())
        jax.profiler.start_trace(self.log_dir)
        self.active = {"start_step": step, "end_step": step + steps - 1, **origin,
                       "start_time": time.time(), "before": before,
                       "started": time.perf_counter()}

    def after_step(self, done: int, state: Any) -> None:
        """Stops a trace whose last step has run; polls for a request."""
        if self.active is not None and done > self.active["end_step"]:
            jax.block_until_ready(state)  # the traced steps' device work, in the trace
            jax.profiler.stop_trace()
            self._record(done)
        if self.active is None and self.pending is None:
            self._poll(done)

    def close(self) -> None:
        """Stops a trace still running (the run ended or was stopped inside it)."""
        if self.active is not None:
            jax.profiler.stop_trace()
            self._record(None)

    def _runs(self) -> list[str]:
        path = os.path.join(self.log_dir, PROFILE_SUBDIR)
        return storage.listdir(path) if storage.exists(path) else []

    def _record(self, done: int | None) -> None:
        active, self.active = self.active, None
        if done is not None:
            active["end_step"] = done - 1
        new = sorted(set(self._runs()) - active.pop("before"))
        seconds = time.perf_counter() - active.pop("started")
        record = {**active, "seconds": seconds,
                  "trace_dir": os.path.join(self.log_dir, PROFILE_SUBDIR, new[-1])
                  if new else None}
        if self.is_main:
            storage.append_text(os.path.join(self.workdir, RECORD_FILE),
                                json.dumps(record) + "\n")

    def _poll(self, done: int) -> None:
        if self.multiprocess:  # a collective: at steps every process knows, not by clock
            if done % self.poll_every_steps:
                return
        else:
            now = time.monotonic()
            if now - self.last_poll < self.poll_seconds:
                return
            self.last_poll = now
        steps, asked = 0, 0.0
        if self.is_main:
            path = os.path.join(self.workdir, REQUEST_FILE)
            if storage.exists(path):
                steps = self.default_steps
                try:
                    request = json.loads(storage.read_text(path))
                    steps = int(request.get("steps", steps))
                    asked = float(request.get("time", 0.0))
                except (ValueError, AttributeError, TypeError):
                    pass  # an unreadable request: the default number of steps
                storage.remove(path)
        if self.multiprocess:
            from jax.experimental import multihost_utils

            steps = int(multihost_utils.broadcast_one_to_all(steps))
        if steps > 0:
            self.pending = (done, steps, {"source": "request", "request_time": asked})
