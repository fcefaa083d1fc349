"""Preemption: stop at a step boundary on SIGTERM/SIGINT, save, and exit cleanly.

Schedulers (SLURM, Kubernetes, TPU maintenance events) send SIGTERM some
time before they kill a job. The guard turns the signal into a flag that
the loop reads after each step; the loop then saves a checkpoint at that
step, waits for it, and returns. In a multi-process job the processes must
stop at the same step, or the cooperative save would deadlock: there the
decision goes through JAX's preemption sync point (the coordination
service catches SIGTERM itself, and all processes agree on the first step
at which every one of them asks). Python handlers would replace that
service's handler, so they are installed only in single-process jobs.

A signal can come before any of that exists: SLURM's time-limit warning may arrive
while the processes still import their libraries or join the job. `python -m
nme_train.main` therefore holds SIGTERM/SIGINT from its first line (`hold_signals`), and
the guard sends the held ones again once it is in place, so they stop the run at its
first step boundary instead of killing a process that has not joined yet.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

PREEMPTED_EXIT_CODE = 75
_HELD: list[int] = []  # signals that came before the guard (see hold_signals)


def hold_signals() -> None:
    """Until a PreemptionGuard is entered, SIGTERM/SIGINT are noted instead of ending the
    process (the entry point calls this before its imports, which take seconds)."""
    for sig in PreemptionGuard.SIGNALS:
        signal.signal(sig, lambda signum, frame: _HELD.append(signum))


def _send_held() -> None:
    """The held signals, to this process again: now to the guard or JAX's preemption
    service."""
    while _HELD:
        os.kill(os.getpid(), _HELD.pop(0))


class PreemptionGuard:
    """Installs SIGTERM/SIGINT handlers for its lifetime (a context manager)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionGuard:
        import jax

        if threading.current_thread() is not threading.main_thread():
            return self
        if jax.process_count() == 1:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        else:  # the coordination service watches SIGTERM only
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
        _send_held()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal_name = signal.Signals(signum).name

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        """Ctrl-C in a multi-process job: a SIGTERM to this process, which the preemption
        service turns into a stop at a step every process agrees on; a second one stops
        at once."""
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)

    def should_stop(self, step: int) -> bool:
        """True when the job must stop after `step`; the same answer on every process."""
        import jax

        if jax.process_count() == 1:
            return self.signal_name is not None
        from jax.experimental import multihost_utils

        try:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        except RuntimeError:  # no preemption service (jax.distributed without it)
            return False
