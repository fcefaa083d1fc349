"""Probe the curvature of a run's checkpoints, also while the run is training.

    nme-probe --workdir DIR                 # the newest checkpoint
    nme-probe --workdir DIR --step 400      # one checkpoint
    nme-probe --workdir DIR --watch         # each new checkpoint, until the run ends
    nme-probe --workdir DIR --set probes.lanczos_steps=40 --set probes.density_runs=4
    nme-probe --workdir DIR --float64       # double precision (CPU)

(`python -m nme_train.commands.probe` is the same.) Reads DIR/config.json (`--set`
changes probe fields) and restores finalised checkpoints read-only, through a hard-linked
snapshot, onto this process's devices; appends each record to DIR/probes_offline.jsonl
and writes its figures to TensorBoard under DIR/tensorboard/probes_offline/; steps
already probed are skipped. `--watch` stops after the run's final step, or after
`--idle_timeout` seconds without a new checkpoint. The prober: nme_train.train.offline
(docs/curvature.md, "Probing a running job").
"""

from __future__ import annotations

import argparse
import time

import jax

from nme_train import logs
from nme_train.train.offline import (
    OfflineProber,
    ProbeError,
    finalized_steps,
    load_run_config,
    probed_steps,
)


def main() -> None:
    from nme_train.cli import run_with_errors
    from nme_train.train.checkpoint import CheckpointError
    from nme_train.validation import ConfigError

    run_with_errors(_main, (ProbeError, ConfigError, CheckpointError), prefix="probe: ")


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int, default=None, help="default: the newest")
    parser.add_argument("--watch", action="store_true", help="follow new checkpoints")
    parser.add_argument("--poll_seconds", type=float, default=5.0)
    parser.add_argument("--idle_timeout", type=float, default=600.0,
                        help="--watch: stop after this long without a new checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a config field, e.g. probes.lanczos_steps=40")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one "
                        "error line")
    parser.add_argument("--float64", action="store_true",
                        help="probe in float64 (CPU; the checkpoint's float32 values are cast)")
    args = parser.parse_args()
    logs.setup(debug=args.debug)  # the trainer's code reports through absl logging

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    config = load_run_config(args.workdir, args.set)
    prober = OfflineProber(args.workdir, config, args.float64)
    try:
        (_watch if args.watch else _probe_once)(prober, args)
    finally:
        prober.writer.close()


def _probe_once(prober: OfflineProber, args: argparse.Namespace) -> None:
    steps = finalized_steps(args.workdir)
    if not steps:
        raise ProbeError(f"no finished checkpoint in {args.workdir}")
    step = steps[-1] if args.step is None else args.step
    if step not in steps:
        raise ProbeError(f"--step {step}: no finished checkpoint at that step; the run "
                         f"has {steps}")
    if prober.probe(step) is None:
        raise ProbeError(f"the checkpoint at step {step} could not be read (above)")


def _watch(prober: OfflineProber, args: argparse.Namespace) -> None:
    done = probed_steps(args.workdir)
    last_new = time.monotonic()
    while True:
        todo = [s for s in finalized_steps(args.workdir) if s not in done]
        for step in todo:
            record = prober.probe(step)
            done.add(step)
            last_new = time.monotonic()
            if record is not None and record.get("total_steps") == step:
                print(f"probe: the run's final step {step} is probed; done", flush=True)
                return
        if time.monotonic() - last_new > args.idle_timeout:
            print(f"probe: no new checkpoint for {args.idle_timeout:.0f} s; stopping", flush=True)
            return
        time.sleep(args.poll_seconds)

if __name__ == "__main__":
    main()
