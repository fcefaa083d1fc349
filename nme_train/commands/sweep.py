"""Run every point of an experiment grid (configs/paper/eN.py), each in its own workdir.

    nme-sweep --config configs/paper/e1.py:study --workdir DIR --jobs 2       # here
    nme-sweep --config configs/paper/e1.py:imagenet --workdir DIR --launcher slurm \\
        --sbatch_args="--nodes=4 --time=24:00:00"
    nme-sweep --config configs/paper/e1.py --workdir DIR --launcher print    # the commands

(`python -m nme_train.commands.sweep` is the same.) Point P runs in DIR/P as
`python -m nme_train.main --config=FILE:SCALE/P --workdir=DIR/P`, so a killed sweep resumes
where its runs stopped; finished and diverged points are skipped; pending points run seed
by seed (every seed-0 point first). Two experiments that share points can be swept into
one DIR. Launchers: local (`--jobs` at a time), slurm (one launch/slurm.sbatch job per
point), print. Planning and launching: nme_train.sweeps (docs/paper.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from nme_train import storage
from nme_train.sweeps.launch import command, run_local, run_slurm
from nme_train.sweeps.plan import (
    SweepError,
    expand,
    experiment_name,
    load_experiment,
    plan,
    write_manifest,
)


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
