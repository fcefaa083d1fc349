"""Run every point of an experiment grid (configs/paper/eN.py), each in its own workdir.

    python tools/sweep.py --config configs/paper/e1.py:cifar10 --workdir DIR              # local
    python tools/sweep.py --config configs/paper/e1.py:study --workdir DIR --jobs 2
    python tools/sweep.py --config configs/paper/e1.py:imagenet --workdir DIR --launcher slurm \\
        --sbatch_args="--nodes=4 --time=24:00:00"
    python tools/sweep.py --config configs/paper/e1.py --workdir DIR --launcher print

Point P runs in DIR/P (P: its tags, e.g. `activation=gelu,method=gp,rho=0.1,seed=0`) as

    python -m nme_train.main --config=configs/paper/e1.py:SCALE/P --workdir=DIR/P

so each run is resumable by the same command (a killed sweep picks up where
its runs stopped) and a point whose DIR/P/final.json exists is finished and
skipped, as is one whose DIR/P/diverged.json says its training loss became
non-finite (a result of the grid, counted by tools/summarize.py). Pending
points run seed by seed (every seed-0 point first), so a sweep cut short
still covers the whole grid. Two experiments that share points (E1 and E2, E4 and E6, E8 and E9)
can be swept into one DIR: the shared runs run once. A point whose
DIR/P/config.json differs from the config it would run now is refused (the
grid or base config changed: use another DIR, or remove that run).

The sweep writes DIR/sweep_<experiment>.json (its points and plot settings,
read by tools/summarize.py) and DIR/P/point.json; the local launcher adds a
line to DIR/P/machines.jsonl each time it starts a run there (host, CPU
model, a digest of its instruction-set flags, jax version): XLA's CPU code
differs between CPUs, so one run's float results are reproducible on one
machine, not across machines, and a paired comparison should know where its
two sides ran.

Launchers:
  local  runs the pending points here, `--jobs` at a time (one log per run,
         DIR/P/train.log). With --jobs > 1 each run's XLA CPU backend is
         single-threaded (on a 2-core CPU two such runs gave 1.25x the
         throughput of one multi-threaded run). SIGINT/SIGTERM reach the runs
         as SIGTERM: they checkpoint and stop, the sweep exits 75, and the
         next sweep resumes them.
  slurm  submits one job per pending point with launch/slurm.sbatch
         (`sbatch [--sbatch_args] --export=ALL launch/slurm.sbatch`, with CONFIG,
         WORKDIR and REPO in sbatch's environment; checked against a real SLURM
         in tests/test_slurm.py).
  print  prints the command of each pending point (for any other scheduler).
"""

from __future__ import annotations

import argparse
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
import sys
import time
from collections.abc import Sequence

from nme_train import storage
from nme_train.cli import import_config_module
from nme_train.commands import CHECKOUT
from nme_train.experiments import (
    POINT_FILE,
    Point,
    apply_overrides,
    check_grid,
)
from nme_train.train.preemption import PREEMPTED_EXIT_CODE
from nme_train.train.rundir import (
    MACHINES_FILE,
    config_changes,
    read_diverged,
    read_final,
    read_json,
    write_json_atomic,
)

REPO = CHECKOUT  # runs start here: their config paths are relative to the checkout
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


class SweepError(Exception):
    pass


def load_experiment(config_arg: str):
    """(module, scale, config path) of `path.py[:SCALE]`; the module's default scale if none."""
    path, _, scale = config_arg.partition(":")
    if not os.path.isfile(path):
        raise SweepError(f"--config {config_arg!r}: no such file {path!r}; give an "
                         "experiment file, e.g. configs/paper/e1.py:study")
    absolute = os.path.abspath(path)  # runs start in the checkout: name the file from there
    path = (os.path.relpath(absolute, REPO)
            if os.path.commonpath([absolute, REPO]) == REPO else absolute)
    name = os.path.splitext(os.path.basename(path))[0]
    module = import_config_module(absolute, f"--config {config_arg!r}", f"_experiment_{name}")
    if not hasattr(module, "grid"):
        raise SweepError(f"{path} defines no grid(scale): it is not a sweep (E7 is drawn by "
                         "tools/toy_landscape.py)")
    if not scale:
        scale = module.get_config.__defaults__[0]
    if scale not in module.SCALES:
        raise SweepError(f"--config {config_arg!r}: unknown scale {scale!r}; choose one of "
                         f"{tuple(module.SCALES)}")
    return module, scale, path


def experiment_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def expand(module, scale: str) -> list[Point]:
    points = module.grid(scale)
    check_grid(points)
    return points


def point_config_json(module, scale: str, point: Point) -> dict:
    config = apply_overrides(module.base(scale), point.overrides)
    return json.loads(config.to_json_best_effort())


def plan(module, scale: str, path: str, workdir: str) -> tuple[list[Point], list[Point]]:
    """(finished, pending) points; raises SweepError on a run whose config changed."""
    finished, pending, conflicts = [], [], []
    for point in expand(module, scale):
        run_dir = os.path.join(workdir, point.name)
        existing = read_json(os.path.join(run_dir, "config.json"))
        if existing and config_changes(existing, point_config_json(module, scale, point)):
            conflicts.append(run_dir)
            continue
        done = read_final(run_dir) is not None or read_diverged(run_dir) is not None
        (finished if done else pending).append(point)
    if conflicts:
        raise SweepError(f"{len(conflicts)} run(s) in {workdir} were started with another "
                         f"config than {path}:{scale} gives them now (e.g. {conflicts[0]}); "
                         "sweep into a new --workdir or remove those runs")
    # every seed-0 point first, then seed 1, ...: a sweep cut short still covers the grid
    pending.sort(key=lambda p: p.tag_dict.get("seed", 0))
    return finished, pending


def write_manifest(module, scale: str, path: str, workdir: str, points: Sequence[Point]) -> str:
    storage.makedirs(workdir)
    name = experiment_name(path)
    manifest = os.path.join(workdir, f"sweep_{name}.json")
    write_json_atomic(manifest, {
        "experiment": name, "config": path, "scale": scale,
        "plot": getattr(module, "PLOT", {"kind": "final"}),
        "points": [{"name": p.name, "tags": p.tag_dict} for p in points],
    })
    for p in points:
        storage.makedirs(os.path.join(workdir, p.name))
        write_json_atomic(os.path.join(workdir, p.name, POINT_FILE),
                          {"tags": p.tag_dict, "config": f"{path}:{scale}/{p.name}"})
    return manifest


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="configs/paper/eN.py[:SCALE]")
    parser.add_argument("--workdir", required=True, help="directory holding one run per point")
    parser.add_argument("--launcher", choices=("local", "slurm", "print"), default="local")
    parser.add_argument("--jobs", type=int, default=1, help="local: runs at a time")
    parser.add_argument("--sbatch_args", default="", help="slurm: extra sbatch arguments")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the runs")
    parser.add_argument("--only", action="append", default=[], metavar="TAG=VALUE",
                        help="run only the points whose name has this tag (repeat: any of "
                             "them), e.g. --only activation=gelu_nme_ablated")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        print(f"sweep: error: --jobs={args.jobs} must be >= 1", file=sys.stderr)
        return 2
    try:
        module, scale, path = load_experiment(args.config)
        storage.check_reachable(args.workdir, "--workdir")
        finished, pending = plan(module, scale, path, args.workdir)
    except (SweepError, ValueError, KeyError, storage.StorageError) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    manifest = write_manifest(module, scale, path, args.workdir, expand(module, scale))
    total = len(finished) + len(pending)
    if args.only:
        pending = [p for p in pending if any(tag in p.name.split(",") for tag in args.only)]
    print(f"sweep: {experiment_name(path)} at scale {scale}: {total} points, {len(finished)} "
          f"finished, {len(pending)} to run{' (--only)' if args.only else ''}; manifest "
          f"{manifest}", flush=True)
    if args.launcher == "print":
        for point in pending:
            print(shlex.join(command(path, scale, point, args.workdir, "python")))
        return 0
    if not pending:
        return 0
    if args.launcher == "slurm":
        return 1 if run_slurm(path, scale, pending, args.workdir, args.sbatch_args) else 0
    return run_local(path, scale, pending, args.workdir, args.jobs, args.python)


if __name__ == "__main__":
    sys.exit(main())
