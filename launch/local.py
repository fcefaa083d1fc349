#!/usr/bin/env python3
"""Run one nme_train job as N processes on this machine (jax.distributed on loopback).

Needs: this repository and its environment (README's setup). No scheduler.

    python launch/local.py --processes 2 --devices 4 -- \
        --config=configs/default.py --workdir=workdirs/local2x4
    launch/local.sh 2 4 --config=configs/default.py --workdir=workdirs/local2x4

Each process runs `python -m nme_train.main <trainer flags>` with
NME_COORDINATOR=127.0.0.1:<free port>, NME_NUM_PROCESSES, NME_PROCESS_ID
and, for CPU runs (the default; --platform=gpu leaves devices alone),
`--devices` fake CPU devices. Process 0's output is shown; every process
logs to <log_dir>/process_<i>.log (default: <workdir>/logs; for a gs:// workdir,
which a log stream cannot be written to, ./logs/<bucket>/<path> on this machine).

Failure propagates: when one process fails (exits non-zero, other than 75), the
others are stopped (SIGTERM, then SIGKILL after --grace seconds), the launcher
prints the dead process's log tail and exits with its code (1 if it was killed
by a signal). SIGTERM and SIGINT (Ctrl-C) to the launcher reach every process
as SIGTERM (the processes run in their own sessions, so a Ctrl-C at the
terminal reaches the launcher alone): they stop at one step, save a
checkpoint and exit 75 (the trainer's preemption path), and so does the
launcher: run the same command to resume.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

PREEMPTED = 75  # nme_train.train.preemption.PREEMPTED_EXIT_CODE: saved, not finished
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workdir_of(trainer_args: list[str]) -> str | None:
    for arg in trainer_args:
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
    return None


def tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--devices", type=int, default=1, help="fake CPU devices per process")
    parser.add_argument("--platform", default="cpu", choices=["cpu", "gpu", "tpu"])
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--log_dir", default="",
                        help="default: <workdir>/logs (./logs/<bucket>/<path> for gs://)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds between SIGTERM and SIGKILL when stopping the others")
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER,
                        help="-- then the flags of python -m nme_train.main")
    args = parser.parse_args(argv)
    trainer_args = [a for a in args.trainer_args if a != "--"]
    if args.processes < 1 or args.devices < 1:
        parser.error("--processes and --devices must be >= 1")
    workdir = workdir_of(trainer_args)
    if workdir is None:
        parser.error("give the trainer's --workdir=DIR after --")
    remote = "://" in workdir
    log_dir = args.log_dir or (os.path.join("logs", workdir.split("://", 1)[1]) if remote
                               else os.path.join(workdir, "logs"))
    os.makedirs(log_dir, exist_ok=True)
    port = args.port or free_port()

    procs, logs = [], []
    for i in range(args.processes):
        env = {**os.environ, "NME_COORDINATOR": f"127.0.0.1:{port}",
               "NME_NUM_PROCESSES": str(args.processes), "NME_PROCESS_ID": str(i),
               "PYTHONUNBUFFERED": "1"}
        if args.platform == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                                f"device_count={args.devices}").strip()
        log_path = os.path.join(log_dir, f"process_{i}.log")
        log = open(log_path, "w", encoding="utf-8")
        procs.append(subprocess.Popen([sys.executable, "-m", "nme_train.main", *trainer_args],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        logs.append(log_path)
    print(f"launch/local: {args.processes} process(es) x {args.devices} device(s), "
          f"coordinator 127.0.0.1:{port}, logs in {log_dir}", flush=True)

    def forward(signum, frame):  # the trainer's preemption signal, whichever arrived
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    shown = 0  # bytes of process 0's log already echoed
    failed = None
    while True:
        shown = echo(logs[0], shown)
        codes = [p.poll() for p in procs]
        # a process killed by a signal is the cause when others have exited since (their
        # collectives lost a peer): name it first, whichever poll saw them together
        failures = [i for i, c in enumerate(codes) if c not in (None, 0, PREEMPTED)]
        failed = min(failures, key=lambda i: (codes[i] > 0, i)) if failures else None
        if failed is not None or all(c in (0, PREEMPTED) for c in codes):
            break
        time.sleep(0.2)
    echo(logs[0], shown)
    if failed is None and PREEMPTED in codes:
        print(f"launch/local: stopped at a checkpoint (exit {PREEMPTED}); run the same command "
              "to resume", flush=True)
        return PREEMPTED
    if failed is None:
        print("launch/local: all processes finished", flush=True)
        return 0

    code = procs[failed].returncode
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    print(f"launch/local: process {failed} {how}; stopping the others", file=sys.stderr,
          flush=True)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + args.grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print(f"launch/local: last lines of process {failed}'s log ({logs[failed]}):\n"
          f"{tail(logs[failed])}", file=sys.stderr, flush=True)
    return code if code > 0 else 1


def echo(path: str, offset: int) -> int:
    """Prints what `path` gained since `offset`; returns the new offset."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            text = f.read()
    except OSError:
        return offset
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
    return offset + len(text.encode("utf-8"))


if __name__ == "__main__":
    sys.exit(main())
