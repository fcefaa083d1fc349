"""A step watchdog: a process whose training stops making progress exits instead of hanging.

In a multi-process job a process that hangs (a stuck collective, a stalled
file system, a peer stopped by the OS) blocks every other process in the
next collective, and nothing fails: the job waits forever. The watchdog is
a daemon thread that the loop feeds after each completed step; when
`timeout` seconds pass without one, it prints what happened and ends the
process with exit code 3, so that the launcher or scheduler sees a failure
and stops the job (it can then be restarted from the last checkpoint). It
is armed only after the first step (which includes compilation) and is
paused around evaluations and probes, which can legitimately take longer
than a step; checkpoint saves stay watched (in a multi-process job their
blocking part waits on every process). `config.watchdog_seconds`: 0 turns
it off; the default (-1) is 1800 s in multi-process jobs and off otherwise.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from absl import logging

EXIT_CODE = 3
MULTI_PROCESS_DEFAULT = 1800.0


def watchdog_timeout(setting: float) -> float:
    """config.watchdog_seconds resolved: -1 is 1800 s with several processes, else off."""
    if setting >= 0:
        return float(setting)
    import jax

    return MULTI_PROCESS_DEFAULT if jax.process_count() > 1 else 0.0


class StepWatchdog:
    """Exits the process when no step completes for `timeout` seconds (0: off)."""

    def __init__(self, timeout: float, process_index: int = 0):
        self.timeout = timeout
        self.process_index = process_index
        self._last: float | None = None  # None: not armed (before the first step, paused)
        self._step = 0
        self._stop = threading.Event()
        self._thread = None
        if timeout > 0:
            self._thread = threading.Thread(target=self._watch, name="step-watchdog", daemon=True)
            self._thread.start()

    def beat(self, step: int) -> None:
        """A step completed (its results reached the host)."""
        self._step, self._last = step, time.monotonic()

    @contextlib.contextmanager
    def paused(self):
        """Not a step (evaluation, probe, checkpoint wait): the clock restarts after it."""
        armed = self._last is not None
        self._last = None
        try:
            yield
        finally:
            if armed:
                self._last = time.monotonic()

    def close(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        interval = min(5.0, self.timeout / 10)
        while not self._stop.wait(interval):
            last = self._last
            if last is not None and time.monotonic() - last > self.timeout:
                logging.error(
                    "nme_train: process %d: no training step finished for %.0f s after step %s "
                    "(a process hung or died, or a collective is stuck); exiting so the job "
                    "fails instead of hanging. Restarting resumes from the last checkpoint.",
                    self.process_index, self.timeout, self._step)
                logging.flush()
                os._exit(EXIT_CODE)
