"""Launching a sweep's pending points: here, `jobs` at a time, or as SLURM jobs.

local  runs `python -m nme_train.main --config=FILE:SCALE/P --workdir=DIR/P` for each
       point, `jobs` at a time (one log per run, DIR/P/train.log; with jobs > 1 each
       run's XLA CPU backend is single-threaded: on a 2-core CPU two such runs gave 1.25x
       the throughput of one multi-threaded run), each in its own session. SIGINT/SIGTERM
       reach the runs as SIGTERM: they checkpoint and stop, and the sweep exits 75
       (PREEMPTED_EXIT_CODE): the same sweep resumes them. Each start adds a line to
       DIR/P/machines.jsonl (host, CPU model, a digest of its instruction-set flags, jax
       version): XLA's CPU code differs between CPUs, so one run's float results are
       reproducible on one machine, not across machines.
slurm  submits one launch/slurm.sbatch job per point (`sbatch [sbatch_args] --export=ALL`,
       with CONFIG, WORKDIR and REPO in sbatch's environment: the names listed in an
       --export value are split at commas, which a point's name holds; checked against a
       real SLURM in tests/test_slurm.py).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

from nme_train import storage
from nme_train.sweeps.grids import Point
from nme_train.sweeps.plan import REPO
from nme_train.train.preemption import PREEMPTED_EXIT_CODE
from nme_train.train.rundir import MACHINES_FILE, read_diverged, read_final

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def log_path(workdir: str, point: Point) -> str:
    """A run's console log: DIR/<point>/train.log, or ./logs/<bucket>/... for a gs:// DIR."""
    directory = storage.local_logs(os.path.join(workdir, point.name))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, "train.log")


def machine_record() -> dict:
    """This machine: host, CPU model, a digest of the CPU's flags, jax version."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux
        pass
    try:
        jax_version = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        jax_version = "?"
    return {"host": socket.gethostname(),
            "cpu": info.get("model name") or platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "cpu_flags_sha256": hashlib.sha256(info.get("flags", "").encode()).hexdigest()[:16],
            "jax": jax_version}


def command(path: str, scale: str, point: Point, workdir: str, python: str) -> list[str]:
    return [python, "-m", "nme_train.main", f"--config={path}:{scale}/{point.name}",
            f"--workdir={os.path.join(workdir, point.name)}"]


def run_local(path: str, scale: str, points: Sequence[Point], workdir: str, jobs: int,
              python: str) -> int:
    """Runs the points `jobs` at a time; returns the sweep's exit code: 1 when a run
    failed, PREEMPTED_EXIT_CODE when a signal stopped the sweep (its runs saved), else 0."""
    env = dict(os.environ)
    if jobs > 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()
    queue = list(points)
    machine = machine_record()
    running: dict[subprocess.Popen, tuple[Point, float, object]] = {}
    failed, done, stopping = [], 0, False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        print(f"sweep: {signal.Signals(signum).name}: stopping the runs (they checkpoint); "
              "run the same sweep again to resume", flush=True)
        for proc in running:
            proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    sweep_start = time.perf_counter()
    try:
        while queue or running:
            while queue and len(running) < jobs and not stopping:
                point = queue.pop(0)
                started = datetime.datetime.now(datetime.UTC)
                storage.append_text(os.path.join(workdir, point.name, MACHINES_FILE), json.dumps(
                    {"started": started.isoformat(timespec="seconds"), **machine}) + "\n")
                log = open(log_path(workdir, point), "a", encoding="utf-8")
                proc = subprocess.Popen(command(path, scale, point, workdir, python), cwd=REPO,
                                        env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # Ctrl-C: the sweep alone
                running[proc] = (point, time.perf_counter(), log)
                print(f"sweep: started {point.name}", flush=True)
            if not running:
                break
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                point, started, log = running.pop(proc)
                log.close()
                seconds = time.perf_counter() - started
                final = read_final(os.path.join(workdir, point.name))
                done += 1
                if proc.returncode == 0 and final is not None:
                    print(f"sweep: [{done}/{len(points)}] {point.name}: eval accuracy "
                          f"{final.get('eval/accuracy', float('nan')):.4f} in {seconds:.0f} s",
                          flush=True)
                elif proc.returncode == PREEMPTED_EXIT_CODE:  # stopped by a signal, saved
                    print(f"sweep: [{done}/{len(points)}] {point.name}: stopped at a "
                          "checkpoint", flush=True)
                elif read_diverged(os.path.join(workdir, point.name)) is not None:
                    diverged = read_diverged(os.path.join(workdir, point.name))
                    print(f"sweep: [{done}/{len(points)}] {point.name}: diverged at step "
                          f"{diverged['step']} (a result: not run again)", flush=True)
                else:
                    failed.append(point.name)
                    print(f"sweep: [{done}/{len(points)}] {point.name}: FAILED (exit "
                          f"{proc.returncode}); log: {log_path(workdir, point)}", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"sweep: {done} run(s) in {time.perf_counter() - sweep_start:.0f} s; "
          f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}", flush=True)
    return 1 if failed else PREEMPTED_EXIT_CODE if stopping else 0


def run_slurm(path: str, scale: str, points: Sequence[Point], workdir: str,
              sbatch_args: str) -> int:
    """Submits one launch/slurm.sbatch job per point; returns the number refused.

    The point reaches its job through sbatch's environment: sbatch copies the submitting
    environment into the job with --export=ALL (sbatch(1), "--export"), while the
    variables listed in an --export value are split at every comma, which a point's name
    and config string contain.
    """
    sbatch = os.environ.get("SBATCH", "sbatch")
    failed = 0
    for point in points:
        run_dir = storage.absolute(os.path.join(workdir, point.name))
        output = os.path.abspath(os.path.dirname(log_path(workdir, point)))
        cmd = [sbatch, *shlex.split(sbatch_args), f"--job-name={point.name}",
               f"--output={output}/slurm-%j.out", "--export=ALL",
               os.path.join(REPO, "launch", "slurm.sbatch")]
        env = {**os.environ, "CONFIG": f"{path}:{scale}/{point.name}", "WORKDIR": run_dir,
               "REPO": REPO}
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                check=False)
        status = result.stdout.strip() or result.stderr.strip()
        print(f"sweep: {point.name}: {status}", flush=True)
        failed += result.returncode != 0
    return failed
