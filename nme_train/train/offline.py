"""Probing a run from its workdir: what `nme-probe` (nme-probe) does, as a library.

`load_run_config(workdir, overrides)` reads the run's config.json over the
current defaults; `OfflineProber(workdir, config)` rebuilds the run's
experiment on this process's devices (all on the data axis, whatever mesh
the run used) and probes its checkpoints read-only: only checkpoints orbax
has finalised are read, through a hard-linked snapshot (`snapshot`), so the
run's retention can delete one while it is read, and nothing is written
into DIR/checkpoints. Each probe appends one record ("source": "offline")
to DIR/probes_offline.jsonl and its figures to TensorBoard under
DIR/tensorboard/probes_offline/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import jax

from nme_train import storage
from nme_train.base_config import base_config
from nme_train.config_fields import parse_assignments, set_fields
from nme_train.data import DATASETS, default_data_dir, split_size
from nme_train.optim import learning_rate_schedule
from nme_train.train.checkpoint import (
    abstract_with_shardings,
    checkpoint_dir,
    describe_error,
    restore_checkpoint,
    saved_steps,
)
from nme_train.train.metrics import MetricWriter
from nme_train.train.probing import RunProbes, read_probes, summary, write_record
from nme_train.train.program import build_program
from nme_train.train.rundir import upgrade_saved_config
from nme_train.validation import validate

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
    if storage.is_remote(source):
        yield source
        return
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
    path = os.path.join(workdir, "config.json")
    try:
        storage.check_reachable(workdir, "--workdir", writable=False)
        saved = upgrade_saved_config(json.loads(storage.read_text(path)))
    except storage.StorageError as e:
        raise ProbeError(str(e)) from None
    except FileNotFoundError:
        raise ProbeError(f"{path} not found; --workdir must be a run's workdir") from None
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
    return saved_steps(checkpoint_dir(workdir))


def probed_steps(workdir: str) -> set[int]:
    return {record["step"] for record in read_probes(workdir, OFFLINE_FILE)}


class OfflineProber:
    """The run's experiment rebuilt on this process's devices, and its probe suite."""

    def __init__(self, workdir: str, config, float64: bool = False):
        devices = jax.devices()
        with config.mesh.unlocked():
            config.mesh.data, config.mesh.fsdp = -1, 1
        # the probe batches are the run's (probes.batch_size, 0 = its training batch); the
        # run's own batch sizes need not divide this machine's devices, so they are not used
        run_batch_size = config.batch_size
        with config.unlocked():
            config.probes.batch_size = config.probes.batch_size or config.batch_size
            config.batch_size = config.eval_batch_size = len(devices) * jax.process_count()
        validate(config, len(devices), jax.process_count())
        data_config = config.data.copy_and_resolve_references()
        with data_config.unlocked():
            data_config.data_dir = config.data.data_dir or default_data_dir()
        spec = DATASETS[config.data.name]
        self.optimizer = config.optimizer
        # the run's steps per epoch: its learning rate at a step is the schedule's over the
        # run's total steps (the checkpoint's meta), which the stability figure needs
        self.steps_per_epoch = max(split_size(
            spec, data_config.train_split or spec.train_split, data_config.data_dir)
            // run_batch_size, 1)
        self.workdir = workdir
        self.program = build_program(config, spec, devices, total_steps=1, steps_per_epoch=1)
        probe_program = self.program
        self.float64 = float64
        if float64:  # the same network computing in float64 (the checkpoint is cast)
            config64 = config.copy_and_resolve_references()
            with config64.unlocked():
                config64.model.dtype = config64.model.param_dtype = "float64"
            probe_program = build_program(config64, spec, devices, total_steps=1,
                                         steps_per_epoch=1)
            config = config64
        self.probes = RunProbes(config, spec, probe_program, data_config)
        self.writer = MetricWriter(workdir, enabled=jax.process_index() == 0, jsonl=False,
                                   tensorboard_subdir=TENSORBOARD_RUN, flush_secs=5)

    def restore(self, step: int):
        source = os.path.join(checkpoint_dir(self.workdir), str(step))
        target = abstract_with_shardings(self.program.abstract_state, self.program.state_sharding)
        with snapshot(source, os.path.join(self.workdir, SNAPSHOTS, str(step))) as path:
            return restore_checkpoint(path, target)

    def probe(self, step: int) -> dict | None:
        try:
            state, meta = self.restore(step)
        except Exception as error:  # noqa: BLE001 - deleted by the run's retention, or unreadable
            print(f"probe: skipped the checkpoint at step {step} ({describe_error(error)})",
                  flush=True)
            return None
        if self.float64:
            state = state.replace(**{k: jax.tree.map(lambda x: x.astype("float64"),
                                                     getattr(state, k))
                                     for k in ("params", "model_state")})
        total = meta.get("total_steps")
        rate = (float(learning_rate_schedule(self.optimizer, total, self.steps_per_epoch)(step))
                if total else None)
        record = self.probes.probe(state, step, learning_rate=rate)
        record["source"] = "offline"
        record["dtype"] = "float64" if self.float64 else "float32"
        record["total_steps"] = meta.get("total_steps")
        write_record(self.workdir, record, OFFLINE_FILE, self.writer)
        print(summary(record), flush=True)
        return record
