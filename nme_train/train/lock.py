"""One workdir, one writer: the lock a trainer holds on its workdir while it runs.

Two trainers started on one workdir (by mistake, or a launcher's retry while
the first is alive) would both write its checkpoints, metrics and final.json.
The trainer's process 0 takes WORKDIR/writer.lock before anything is written
(after the config is validated, before any compile) and removes it when the
run ends; a second trainer refuses with one line naming the holder.

The lock file is created exclusively (O_CREAT | O_EXCL) and holds the
holder's host, pid and start time; a thread touches it every HEARTBEAT_S
seconds while the holder lives. A lock is stale, and taken over with a
warning, when its holder is gone: on the same host, its pid no longer runs;
on another host (a shared file system), its heartbeat is older than STALE_S.
A killed trainer (kill -9, a lost node) therefore never blocks its rerun for
long. The take-over itself is exclusive: the stale file is renamed away
first (one renamer wins), then the new lock is created exclusively.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time

from nme_train.train.rundir import RunDirError

LOCK_FILE = "writer.lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0


class WorkdirLocked(RunDirError):
    """Another live trainer holds the workdir; the message names it."""


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read(path: str) -> tuple[dict, float] | None:
    """(holder record, seconds since its last heartbeat), or None when there is no lock."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:  # being written this instant, or damaged
        holder = {}
    return holder, age


def stale_reason(holder: dict, age: float) -> str | None:
    """Why the lock of `holder` (heartbeat `age` seconds ago) is stale, or None if it is
    live. The heartbeat also covers a pid reused by another process on the same host."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and not _pid_running(holder["pid"]):
        return f"process {holder['pid']} on this host is no longer running"
    if age > STALE_S:
        return f"its heartbeat is {age:.0f} s old (more than {STALE_S:.0f} s)"
    return None


def describe_holder(holder: dict, age: float) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}, alive {age:.0f} s ago")


class WorkdirLock:
    """The writer's lock on `workdir` (see the module docstring)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.created_workdir = False  # removed again on release if the run wrote nothing
        self.taken_over: str | None = None  # why a stale lock was replaced, for the log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> WorkdirLock:
        """Takes the lock, replacing a stale one; WorkdirLocked when a live trainer has it."""
        self.created_workdir = not os.path.exists(os.path.dirname(self.path))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                found = _read(self.path)
                if found is None:  # released meanwhile: try again
                    continue
                holder, age = found
                reason = stale_reason(holder, age)
                if reason is None:
                    raise WorkdirLocked(
                        f"{os.path.dirname(self.path)} is being written by another trainer "
                        f"({describe_holder(holder, age)}); wait for it to finish or stop "
                        "it (a lock left by a killed trainer is taken over once its process "
                        f"is gone, or after {STALE_S:.0f} s without a heartbeat from another "
                        "host)"
                    ) from None
                aside = f"{self.path}.stale.{os.getpid()}"
                try:
                    os.rename(self.path, aside)  # one of several rerunners wins
                except FileNotFoundError:
                    continue
                os.remove(aside)
                self.taken_over = (f"took over the lock of {describe_holder(holder, age)}: "
                                   f"{reason}")
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            self._thread = threading.Thread(target=self._beat, name="workdir-lock",
                                            daemon=True)
            self._thread.start()
            return self
        raise WorkdirLocked(f"{self.path}: could not take the lock (it changed hands three "
                            "times while trying); is another trainer starting on this workdir?")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # removed by hand: nothing to keep alive
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            workdir = os.path.dirname(self.path)
            if self.created_workdir and not os.listdir(workdir):
                os.rmdir(workdir)

    close = release
