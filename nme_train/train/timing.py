"""Where a run's wall time goes: the share of each phase of the loop (goodput).

The trainer wraps each phase in `account.phase(name)`:

  step        the compiled training steps: dispatching them and waiting for their
              results (a step's metrics are read one step later)
  input       waiting for the next batch (the host pipeline and the copy to the devices)
  compile     the first step of the run (lowering and compiling it) and its cost analysis
  checkpoint  starting a save and waiting for the previous one (the write itself runs in
              the background and overlaps the steps)
  probe       curvature probes
  eval        evaluations
  profile     starting and stopping a profiler trace

and everything else (logging, TensorBoard, the watchdog) is `other`. Each log line and
final.json carry `time/<phase>_share` (of the wall time since the previous line, and of
the whole run in final.json) and `time/input_queue_depth`, the mean number of batches
the pipeline had ready when a step asked for one (0: the steps wait for input).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

PHASES = ("step", "input", "compile", "checkpoint", "probe", "eval", "profile")


class TimeAccount:
    """Seconds per phase, over the whole run and since the last `window()`."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.restart()

    def restart(self) -> None:
        """Starts the account afresh (the trainer: when its step loop starts)."""
        self.start = self.window_start = self.clock()
        self.total = dict.fromkeys(PHASES, 0.0)
        self.recent = dict.fromkeys(PHASES, 0.0)
        self.depths: list[int] = []
        self.all_depths: list[int] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = self.clock()
        try:
            yield
        finally:
            now = self.clock()
            self.total[name] += now - started
            # a window opened inside this phase (a log line written by it) gets its part
            self.recent[name] += now - max(started, self.window_start)

    def queue_depth(self, depth: int) -> None:
        """How many batches were ready when a step asked for one."""
        self.depths.append(depth)
        self.all_depths.append(depth)

    @staticmethod
    def _shares(spent: dict[str, float], wall: float, depths: list[int]) -> dict[str, float]:
        wall = max(wall, 1e-9)
        out = {f"time/{name}_share": seconds / wall for name, seconds in spent.items()}
        out["time/other_share"] = max(0.0, 1.0 - sum(spent.values()) / wall)
        out["time/wall_sec"] = wall
        if depths:
            out["time/input_queue_depth"] = sum(depths) / len(depths)
        return out

    def window(self) -> dict[str, float]:
        """The shares since the previous call (for a log line); starts a new window."""
        now = self.clock()
        out = self._shares(self.recent, now - self.window_start, self.depths)
        self.recent = dict.fromkeys(PHASES, 0.0)
        self.depths = []
        self.window_start = now
        return out

    def run(self) -> dict[str, float]:
        """The shares over the whole run so far (for final.json)."""
        return self._shares(self.total, self.clock() - self.start, self.all_depths)


def time_summary(shares: dict[str, float]) -> str:
    """One console line of `run()` or `window()`: the phases by share, largest first."""
    parts = sorted(((shares[f"time/{name}_share"], name) for name in (*PHASES, "other")
                    if f"time/{name}_share" in shares), reverse=True)
    text = " | ".join(f"{name} {100 * share:.0f}%" for share, name in parts if share >= 0.005)
    depth = shares.get("time/input_queue_depth")
    ready = f" (input queue: {depth:.1f} batches ready)" if depth is not None else ""
    return f"where the time went: {text}{ready} of {shares['time/wall_sec']:.1f} s"
