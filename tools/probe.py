"""Probe the curvature of a run's checkpoints, also while the run is training.

    python tools/probe.py --workdir DIR                 # the newest checkpoint
    python tools/probe.py --workdir DIR --step 400      # one checkpoint
    python tools/probe.py --workdir DIR --watch         # each new checkpoint, until the run ends
    python tools/probe.py --workdir DIR --set probes.lanczos_steps=40 --set probes.density_runs=4
    python tools/probe.py --workdir DIR --float64         # double precision (CPU)

Reads DIR/config.json (the run's config; `--set` changes probe fields), and
restores checkpoints read-only onto this process's devices (all of them on
the data axis, whatever mesh the run used): nothing is written into
DIR/checkpoints, no checkpoint manager is opened there, and the run's saves
are never waited on. Only checkpoints orbax has finalised are read, through
a hard-linked snapshot in DIR/probe_snapshots (removed after each probe),
so that the run's retention can delete a checkpoint while it is read; one
deleted before the snapshot is skipped with a warning.
Each probe appends one JSON line (the probe suite's record, with
"source": "offline") to DIR/probes_offline.jsonl, and writes the same
figures to TensorBoard under DIR/tensorboard/probes_offline/ (a run of its
own beside the training curves: every top-k and bottom-k eigenvalue with
its error bound, the traces with a one-SE margin, per-layer traces, SLQ
densities as histograms); steps already in that file are not probed
again. `--watch` polls for new checkpoints and stops after probing the
run's final step, or after `--idle_timeout` seconds without a new
checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import time

import jax

from nme_train.config_fields import parse_assignments, set_fields
from nme_train.train.metrics import MetricWriter

OFFLINE_FILE = "probes_offline.jsonl"
TENSORBOARD_RUN = "probes_offline"  # DIR/tensorboard/<this>/


class ProbeError(Exception):
    """A mistake in the command (reported as one `probe: error:` line)."""

SNAPSHOTS = "probe_snapshots"


@contextlib.contextmanager
def snapshot(source: str, target: str):
    """A hard-linked copy of the checkpoint directory `source`, removed afterwards.

    Hard links keep the files' data alive if the run deletes the checkpoint
    (its retention) while it is being read, and cost no copy. Where links are
    impossible (another filesystem, object storage) the checkpoint is read in
    place. The run's files are never modified either way.
    """
    try:
        for root, _, files in os.walk(source):
            os.makedirs(os.path.join(target, os.path.relpath(root, source)), exist_ok=True)
            for name in files:
                os.link(os.path.join(root, name),
                        os.path.join(target, os.path.relpath(root, source), name))
    except OSError as e:
        shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(target))
        if isinstance(e, FileNotFoundError):
            raise
        yield source
        return
    try:
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):  # DIR/probe_snapshots itself, once empty
            os.rmdir(os.path.dirname(target))


def load_run_config(workdir: str, overrides: list[str]):
    """The run's config (DIR/config.json) over the current defaults, with `overrides`."""
    from nme_train.base_config import base_config

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ProbeError(f"{path} not found; --workdir must be a run's workdir")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    config = base_config()

    def merge(target, values, prefix):
        for key, value in values.items():
            if key in target and hasattr(target[key], "items") and isinstance(value, dict):
                merge(target[key], value, f"{prefix}{key}.")
            else:
                with target.unlocked():
                    target[key] = tuple(map(_tuple, value)) if isinstance(value, list) else value

    merge(config, saved, "")
    for key, value in parse_assignments(overrides):
        try:
            set_fields(config, [(key, value)], "the run's config")
        except KeyError as e:
            raise ProbeError(f"--set {key}: {e.args[0]}") from None
    return config


def _tuple(value):
    return tuple(map(_tuple, value)) if isinstance(value, list) else value


def finalized_steps(workdir: str) -> list[int]:
    """Steps whose checkpoint orbax has finished writing."""
    from nme_train.train.checkpoint import checkpoint_dir, saved_steps

    return saved_steps(checkpoint_dir(workdir))


def probed_steps(workdir: str) -> set[int]:
    from nme_train.train.probing import read_probes

    return {record["step"] for record in read_probes(workdir, OFFLINE_FILE)}


class OfflineProber:
    """The run's experiment rebuilt on this process's devices, and its probe suite."""

    def __init__(self, workdir: str, config, float64: bool = False):
        from nme_train.data import DATASETS, default_data_dir
        from nme_train.train.experiment import build_experiment
        from nme_train.train.probing import RunProbes
        from nme_train.validation import validate

        devices = jax.devices()
        with config.mesh.unlocked():
            config.mesh.data, config.mesh.fsdp = -1, 1
        # the probe batches are the run's (probes.batch_size, 0 = its training batch); the
        # run's own batch sizes need not divide this machine's devices, so they are not used
        with config.unlocked():
            config.probes.batch_size = config.probes.batch_size or config.batch_size
            config.batch_size = config.eval_batch_size = len(devices) * jax.process_count()
        validate(config, len(devices), jax.process_count())
        data_config = config.data.copy_and_resolve_references()
        with data_config.unlocked():
            data_config.data_dir = config.data.data_dir or default_data_dir()
        spec = DATASETS[config.data.name]
        self.workdir = workdir
        self.exp = build_experiment(config, spec, devices, total_steps=1, steps_per_epoch=1)
        probe_exp = self.exp
        self.float64 = float64
        if float64:  # the same network computing in float64 (the checkpoint is cast)
            config64 = config.copy_and_resolve_references()
            with config64.unlocked():
                config64.model.dtype = config64.model.param_dtype = "float64"
            probe_exp = build_experiment(config64, spec, devices, total_steps=1,
                                         steps_per_epoch=1)
            config = config64
        self.probes = RunProbes(config, spec, probe_exp, data_config)
        self.writer = MetricWriter(workdir, enabled=jax.process_index() == 0, jsonl=False,
                                   tensorboard_subdir=TENSORBOARD_RUN, flush_secs=5)

    def restore(self, step: int):
        import orbax.checkpoint as ocp

        from nme_train.train.checkpoint import abstract_with_shardings, checkpoint_dir

        source = os.path.join(checkpoint_dir(self.workdir), str(step))
        target = abstract_with_shardings(self.exp.abstract_state, self.exp.state_sharding)
        with snapshot(source, os.path.join(self.workdir, SNAPSHOTS, str(step))) as path:
            with ocp.StandardCheckpointer() as checkpointer:  # closed: no threads left behind
                state = checkpointer.restore(os.path.join(path, "state"), target)
            with open(os.path.join(path, "meta", "metadata"), encoding="utf-8") as f:
                meta = json.load(f)
        return state, meta

    def probe(self, step: int) -> dict | None:
        from nme_train.train.probing import summary, write_record

        try:
            state, meta = self.restore(step)
        except Exception as error:  # noqa: BLE001 - deleted by the run's retention, or unreadable
            from nme_train.train.checkpoint import describe_error

            print(f"probe: skipped the checkpoint at step {step} ({describe_error(error)})",
                  flush=True)
            return None
        if self.float64:
            state = state.replace(**{k: jax.tree.map(lambda x: x.astype("float64"),
                                                     getattr(state, k))
                                     for k in ("params", "model_state")})
        record = self.probes.probe(state, step)
        record["source"] = "offline"
        record["dtype"] = "float64" if self.float64 else "float32"
        record["total_steps"] = meta.get("total_steps")
        write_record(self.workdir, record, OFFLINE_FILE, self.writer)
        print(summary(record), flush=True)
        return record


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
