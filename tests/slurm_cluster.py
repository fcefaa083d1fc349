#!/usr/bin/env python3
"""A one-node SLURM cluster on this machine, from Debian's slurm-wlm and munge (test support).

Installs nothing: `apt-get install slurm-wlm munge` first (.ci/run does). Everything the
cluster writes (munge key and socket, slurm.conf, state, logs) lives in one directory, the
daemons run as the current user (root, as slurmd needs), and stopping them leaves nothing
behind. Clients find the cluster through SLURM_CONF:

    python tests/slurm_cluster.py start /tmp/slurm      # prints: export SLURM_CONF=...
    SLURM_CONF=/tmp/slurm/slurm.conf sbatch --wrap hostname
    python tests/slurm_cluster.py stop /tmp/slurm

The configuration is a minimal one in the form of SLURM 22.05's slurm.conf(5): one node
(this host, its CPUs), two partitions on it, `low` and `high`, where a job of `high`
preempts one of `low` by requeueing it (PreemptType=preempt/partition_prio,
PreemptMode=REQUEUE, GraceTime on `low`), so that preemption can be checked as it happens
on a real cluster: SIGTERM to the job at the start of the grace time, SIGKILL at its end.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
GRACE_SECONDS = 60  # `low` partition: SIGTERM, then this long before SIGKILL


def available() -> list[str]:
    """The programs this cluster needs that are missing here ([] when it can start)."""
    needed = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel",
              "squeue", "sacct")
    paths = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [p for p in needed if shutil.which(p, path=paths) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def write_config(directory: str) -> str:
    """slurm.conf for one node (this host) in `directory`; returns its path."""
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    user = pwd.getpwuid(os.getuid()).pw_name
    d = directory
    grace = f"GraceTime={GRACE_SECONDS} OverSubscribe=NO"
    text = f"""\
ClusterName=nme
SlurmctldHost={host}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={d}/munge.socket
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmdSpoolDir={d}/spool
StateSaveLocation={d}/state
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
KillWait=30
MinJobAge=3600
MessageTimeout=30
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=low Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 {grace}
PartitionName=high Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10 OverSubscribe=NO
"""
    path = os.path.join(directory, "slurm.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _munge_key(path: str) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(path, 0o400)


def start(directory: str, timeout: float = 60) -> dict[str, str]:
    """Starts munged, slurmctld and slurmd; returns the environment clients need."""
    missing = available()
    if missing:
        raise RuntimeError(f"SLURM cannot start here: {', '.join(missing)} not found; "
                           "install Debian's slurm-wlm and munge (apt-get install slurm-wlm "
                           "munge)")
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    key = os.path.join(directory, "munge.key")
    _munge_key(key)
    subprocess.run([_which("munged"), "--force", f"--key-file={key}",
                    f"--socket={directory}/munge.socket",
                    f"--pid-file={directory}/munged.pid",
                    f"--log-file={directory}/munged.log",
                    f"--seed-file={directory}/munged.seed"], check=True)
    conf = write_config(directory)
    env = {**os.environ, "SLURM_CONF": conf}
    subprocess.run([_which("slurmctld"), "-f", conf, "-i"], check=True, env=env)
    subprocess.run([_which("slurmd"), "-f", conf], check=True, env=env)
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(["sinfo", "--noheader", "--format=%T", "--partition=low"],
                             capture_output=True, text=True, env=env)
        state = out.stdout.strip()
        if out.returncode == 0 and state.startswith("idle"):
            break
        if time.time() > deadline:
            stop(directory)
            raise RuntimeError(f"SLURM did not become ready in {timeout:.0f} s (node state "
                               f"{state!r}, {out.stderr.strip()}); logs in {directory}")
        time.sleep(0.5)
    return {"SLURM_CONF": conf}


def stop(directory: str) -> None:
    """Stops the daemons started by `start` (by their PID files)."""
    for name in reversed(DAEMONS):
        pid_file = os.path.join(directory, f"{name}.pid")
        try:
            pid = int(open(pid_file).read().strip())
        except (OSError, ValueError):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def cluster(directory: str):
    """The cluster for the body of a `with` block: yields the clients' environment."""
    env = start(directory)
    try:
        yield env
    finally:
        stop(directory)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: slurm_cluster.py start|stop DIRECTORY", file=sys.stderr)
        return 2
    if argv[0] == "start":
        env = start(argv[1])
        print(f"export SLURM_CONF={env['SLURM_CONF']}")
    else:
        stop(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
