"""One workdir, one writer: the lock a trainer holds on its workdir while it runs.

Two trainers started on one workdir (by mistake, or a launcher's retry while
the first is alive) would both write its checkpoints, metrics and final.json.
The trainer's process 0 takes WORKDIR/writer.lock before anything is written
(after the config is validated, before any compile) and removes it when the
run ends; a second trainer refuses with one line naming the holder.

The lock file is created exclusively (O_CREAT | O_EXCL) and holds the
holder's host, pid and start time, the identity of its process table (the
kernel's boot id and the pid namespace), the process's own start time in
that table, and the scheduler's name for its instance (NME_INSTANCE: the
Kubernetes manifests set it to the pod's name); a thread touches it every
HEARTBEAT_S seconds while the holder lives. In a bucket the same lock is an object created
with a generation precondition (only if absent), its heartbeat a metadata field
set only while the object keeps the holder's generation (_LockObject).
A lock is stale, and taken over with a warning, when its holder is gone: in
the same process table, its pid no longer runs or now belongs to a process
started later; under the same host name but another instance (a restarted
pod: same host name, same pid 1, a new pod name), at once; otherwise (another
host: a shared file system, a bucket), when its heartbeat is older than
STALE_S. A Kubernetes Job with a pod failure policy creates a pod's
replacement only once the old pod has terminated, so a new instance name
under the same host name means the holder is gone.
A killed trainer (kill -9, a lost node) therefore never blocks its rerun for
long. The take-over itself is exclusive: the stale file is renamed away
first (one renamer wins; in a bucket, deleted only if it still has the
generation judged stale), then the new lock is created exclusively. Hosts'
clocks are assumed to agree within seconds (NTP) for the heartbeat's age.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time

from nme_train import storage
from nme_train.train.rundir import RunDirError

LOCK_FILE = "writer.lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0


class WorkdirLocked(RunDirError):
    """Another live trainer holds the workdir; the message names it."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time, in clock ticks since boot (proc(5): /proc/PID/stat, 22)."""
    stat = _read(f"/proc/{pid}/stat")
    try:  # the command name (field 2) may hold spaces: count from its closing parenthesis
        return int(stat.rsplit(")", 1)[1].split()[19]) if stat else None
    except (IndexError, ValueError):
        return None


def process_identity(pid: int | None = None) -> dict:
    """What tells this process apart from an earlier holder of the same host name and pid."""
    pid = os.getpid() if pid is None else pid
    try:
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        namespace = None
    return {"boot_id": _read("/proc/sys/kernel/random/boot_id"), "pid_namespace": namespace,
            "start_ticks": _start_ticks(pid), "instance": os.environ.get("NME_INSTANCE", "")}


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_reason(holder: dict, age: float) -> str | None:
    """Why the lock of `holder` (heartbeat `age` seconds ago) is stale, or None if it is
    live (see the module docstring)."""
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int):
        mine = process_identity()
        same_table = all(holder.get(k) == mine[k] for k in ("boot_id", "pid_namespace")) \
            if "boot_id" in holder else True  # a lock written before these fields
        if same_table and not _pid_running(pid):
            return f"process {pid} on this host is no longer running"
        if same_table and holder.get("start_ticks") not in (None, _start_ticks(pid)):
            return f"process {pid} on this host is another process than the holder"
        if holder.get("instance") and mine["instance"] and holder["instance"] != \
                mine["instance"]:
            return (f"its instance {holder['instance']} was replaced by {mine['instance']} "
                    "under the same host name")
    if age > STALE_S:
        return f"its heartbeat is {age:.0f} s old (more than {STALE_S:.0f} s)"
    return None


def describe_holder(holder: dict, age: float) -> str:
    instance = f" ({holder['instance']})" if holder.get("instance") else ""
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{instance}, "
            f"started {holder.get('started', '?')}, alive {age:.0f} s ago")


class _LockFile:
    """The lock as a local file: exclusive create, mtime as the heartbeat."""

    def __init__(self, path: str):
        self.path = path

    def create(self, text: str) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return True

    def read(self) -> tuple[str, float, object] | None:
        """(text, seconds since the heartbeat, token for remove_stale), None when absent."""
        try:
            text = storage.read_text(self.path)
            return text, time.time() - os.stat(self.path).st_mtime, None
        except FileNotFoundError:
            return None

    def remove_stale(self, token: object) -> bool:
        aside = f"{self.path}.stale.{os.getpid()}"
        try:
            os.rename(self.path, aside)  # one of several rerunners wins
        except FileNotFoundError:
            return False
        os.remove(aside)
        return True

    def beat(self) -> bool:
        try:
            os.utime(self.path)
            return True
        except FileNotFoundError:  # removed by hand: nothing to keep alive
            return False

    def remove(self) -> None:
        storage.remove(self.path)


class _LockObject:
    """The lock as an object in a bucket: created only if absent (ifGenerationMatch=0);
    the heartbeat a metadata field set only while the object keeps our generation; a
    stale lock deleted only if it still has the generation judged stale."""

    def __init__(self, path: str):
        self.path = path
        self.generation: int | None = None

    def create(self, text: str) -> bool:
        try:
            self.generation = storage.create_object(self.path, text.encode("utf-8"))
            return True
        except FileExistsError:
            return False

    def read(self) -> tuple[str, float, object] | None:
        try:
            info = storage.object_info(self.path)
            text = storage.read_text(self.path)
        except FileNotFoundError:
            return None
        beat = (info.get("metadata") or {}).get("heartbeat")
        try:
            last = float(beat) if beat else json.loads(text).get("time", 0.0)
        except (ValueError, AttributeError):
            last = 0.0
        return text, time.time() - last, int(info["generation"])

    def remove_stale(self, token: object) -> bool:
        return storage.delete_object(self.path, int(token))

    def beat(self) -> bool:
        return storage.set_object_metadata(self.path, self.generation,
                                           {"heartbeat": f"{time.time():.3f}"})

    def remove(self) -> None:
        if self.generation is not None:
            storage.delete_object(self.path, self.generation)


class WorkdirLock:
    """The writer's lock on `workdir` (see the module docstring)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._file = (_LockObject if storage.is_remote(workdir) else _LockFile)(self.path)
        self.created_workdir = False  # removed again on release if the run wrote nothing
        self.taken_over: str | None = None  # why a stale lock was replaced, for the log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> WorkdirLock:
        """Takes the lock, replacing a stale one; WorkdirLocked when a live trainer has it."""
        self.created_workdir = not storage.exists(self.workdir)
        storage.makedirs(self.workdir)
        now = datetime.datetime.now(datetime.UTC)
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": now.isoformat(timespec="seconds"),
                             "time": now.timestamp(), **process_identity()})
        for _ in range(3):
            if self._file.create(record):
                self._thread = threading.Thread(target=self._beat, name="workdir-lock",
                                                daemon=True)
                self._thread.start()
                return self
            found = self._file.read()
            if found is None:  # released meanwhile: try again
                continue
            text, age, token = found
            try:
                holder = json.loads(text)
            except json.JSONDecodeError:  # being written this instant, or damaged
                holder = {}
            reason = stale_reason(holder, age)
            if reason is None:
                raise WorkdirLocked(
                    f"{self.workdir} is being written by another trainer "
                    f"({describe_holder(holder, age)}); wait for it to finish or stop "
                    "it (a lock left by a killed trainer is taken over once its process "
                    f"is gone, or after {STALE_S:.0f} s without a heartbeat from another "
                    "host)")
            if self._file.remove_stale(token):
                self.taken_over = (f"took over the lock of {describe_holder(holder, age)}: "
                                   f"{reason}")
        raise WorkdirLocked(f"{self.path}: could not take the lock (it changed hands three "
                            "times while trying); is another trainer starting on this workdir?")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if not self._file.beat():
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._file.remove()
            if self.created_workdir:
                storage.remove_empty_dir(self.workdir)

    close = release
