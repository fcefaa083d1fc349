"""The trainer: one run of a config in a workdir, as small named steps.

    Trainer(config, workdir).run()
      plan          validate the config, size the run, apply the workdir
                    policy (nme_train.train.rundir) before anything is built
      take_workdir  process 0 takes the workdir's writer lock
                    (nme_train.train.lock): a second trainer refuses here
      build         data, mesh, model, optimizer, sharded state, compiled
                    steps (nme_train.train.program)
      restore       resume, warm-start or initialise, checking before writing
      open_outputs  the workdir's files, the console header, metrics, probes
      loop          the steps; after each, the periodic actions: read the
                    previous step's metrics (one step late, so the host never
                    stalls the device), checkpoint, evaluate, probe; at the
                    end the last save and probe
      finish        the final evaluation; final.json
Whatever `open_outputs` started (TensorBoard writer, checkpoint executor,
step watchdog) and the lock are closed in `finally`, on success, preemption or
error.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from nme_train import logs, storage
from nme_train.data import DATASETS, default_data_dir, eval_batches, split_size, train_batches
from nme_train.data.pipeline import ReadAhead
from nme_train.train.checkpoint import CheckpointError, abstract_with_shardings, open_checkpointer
from nme_train.train.dry_run import model_flops, program_flops
from nme_train.train.lock import WorkdirLock, WorkdirLocked
from nme_train.train.metrics import (
    Diverged,
    MetricWriter,
    Progress,
    TrainMetrics,
    read_metrics,
    truncate_metrics,
)
from nme_train.train.preemption import PreemptionGuard
from nme_train.train.probing import RunProbes, write_record
from nme_train.train.probing import summary as probe_summary
from nme_train.train.profiling import Profiler
from nme_train.train.program import (
    build_program,
    device_batches,
    evaluate,
    setting_warnings,
    training_length,
)
from nme_train.train.resume import restore_latest, warm_start
from nme_train.train.rundir import (
    CONFIG_FILE,
    DIVERGED_FILE,
    FINAL_FILE,
    CheckpointHealth,
    check_rerun,
    keep_aside,
    read_diverged,
    read_final,
    write_json_atomic,
)
from nme_train.train.timing import TimeAccount, time_summary
from nme_train.train.watchdog import StepWatchdog, watchdog_timeout
from nme_train.validation import validate


def train_and_evaluate(config: Any, workdir: str, devices: list | None = None,
                       extend: bool = False) -> dict[str, Any]:
    """Trains and evaluates the model of `config`, writing outputs into `workdir`.

    Resumes from the latest readable checkpoint in `workdir` when there is
    one, under the workdir policy of nme_train.train.rundir: a finished run
    is left as it is (returns its final metrics with `nothing_to_do` set)
    unless `extend` continues it to more steps. On SIGTERM/SIGINT it saves
    at the current step and returns early with `preempted` set. `devices`
    restricts the mesh to a subset of the devices (default: all). Returns
    the final metrics (eval/accuracy, eval/loss, train/loss, ...). Raises
    Diverged (after writing diverged.json) when the training loss becomes
    NaN or infinite.
    """
    return Trainer(config, workdir, devices, extend).run()


class Trainer:
    """One training run of `config` in `workdir` (see the module docstring)."""

    def __init__(self, config: Any, workdir: str, devices: list | None = None,
                 extend: bool = False):
        self.config, self.workdir, self.extend = config, workdir, extend
        self.devices = jax.devices() if devices is None else list(devices)
        self.is_main = jax.process_index() == 0
        self.ckpt = self.writer = self.watchdog = self.probes = self.lock = None
        self.profiler = self.host_batches = None
        self.account = TimeAccount()
        self.pending = None  # (step, device metrics) of the step in flight

    def log(self, message: str) -> None:
        if self.is_main:
            logging.info("%s", message)

    # -- the run, top to bottom --------------------------------------------
    def run(self) -> dict[str, Any]:
        logs.setup()
        nothing_to_do = self.plan()
        if nothing_to_do:
            self.log(nothing_to_do)
            return {**read_final(self.workdir), "nothing_to_do": True}
        self.take_workdir()
        # SIGTERM from here on (a long compile, the first probe) stops at the first step
        # boundary instead of killing the process
        with PreemptionGuard() as self.guard:
            try:
                self.build()
                how = self.restore()
                self.open_outputs(how)
                preempted = self.loop()
                if preempted:
                    return preempted
                return self.finish()
            except Diverged as e:  # mark the run (nme-sweep counts it) and stop cleanly
                raise self.stop_diverged(e) from None
            finally:
                self.close()

    def plan(self) -> str | None:
        """Validates and sizes the run; the message when there is nothing to do."""
        config = self.config
        validate(config, len(self.devices), jax.process_count())
        self.data_config = config.data.copy_and_resolve_references()
        with self.data_config.unlocked():
            self.data_config.data_dir = config.data.data_dir or default_data_dir()
        self.spec = DATASETS[config.data.name]
        train_split = self.data_config.train_split or self.spec.train_split
        num_train = split_size(self.spec, train_split, self.data_config.data_dir)
        self.total_steps, self.steps_per_epoch = training_length(config, num_train)
        self.config_json = json.loads(config.to_json_best_effort())
        return check_rerun(self.workdir, self.config_json, self.total_steps, self.extend)

    def take_workdir(self) -> None:
        """One writer per workdir (nme_train.train.lock): process 0 takes the lock, and
        every process stops with its error when it is held by another live trainer."""
        error = None
        if self.is_main:
            try:
                self.lock = WorkdirLock(self.workdir).acquire()
                if self.lock.taken_over:
                    logging.warning("warning: %s", self.lock.taken_over)
            except WorkdirLocked as e:
                error = e
        if jax.process_count() > 1:
            held = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
            if held and error is None:
                error = WorkdirLocked(f"{self.workdir} is being written by another trainer "
                                      "(process 0 says why)")
        if error is not None:
            raise error

    def build(self) -> None:
        self.eval_data = eval_batches(self.spec, self.data_config, self.config.eval_batch_size,
                                      jax.process_index(), jax.process_count())
        self.program = build_program(self.config, self.spec, self.devices, self.total_steps,
                                    self.steps_per_epoch)

    def restore(self) -> str:
        """Resumes, warm-starts or initialises the state; says which. Writes nothing."""
        config, program = self.config, self.program
        created = [d for d in (os.path.join(self.workdir, "checkpoints"), self.workdir)
                   if not storage.exists(d)]
        self.ckpt = open_checkpointer(self.workdir, config.checkpoint)
        self.meta, self.changes = {}, {}
        try:
            restored = restore_latest(self.workdir, config, self.ckpt, abstract_with_shardings(
                program.abstract_state, program.state_sharding))
            if restored is not None:
                self.state, self.meta, self.changes = restored
                self.start_step = int(self.meta["step"])
                how = f"resumed from the checkpoint at step {self.start_step}"
                if config.init_from:
                    how += f" (config.init_from={config.init_from!r} is ignored on a resume)"
                return how
            self.start_step = 0
            if config.init_from:
                self.state, source = warm_start(config.init_from, program.init(),
                                                program.state_sharding)
                return f"warm-started from {source}"
            self.state = program.init()
            return "initialised"
        except BaseException:
            self.ckpt.close()
            if self.is_main:  # the directories this start created, innermost first
                for path in created:
                    storage.remove_empty_dir(path)
            raise

    def open_outputs(self, how: str) -> None:
        """The workdir's files and the console header; metrics, probes and the watchdog."""
        if self.is_main:
            self._prepare_workdir()
            self._announce(how)
        config, meta = self.config, self.meta
        self.writer = MetricWriter(self.workdir, enabled=self.is_main)
        self.writer.write_config(self.config_json, self.start_step)
        self.metrics = TrainMetrics(
            self.writer, Progress(self.total_steps, config.batch_size, enabled=self.is_main),
            config.log_every_steps, self.total_steps, self.workdir, extra=self.account.window)
        self.metrics.window = {k: list(v) for k, v in meta.get("metric_window", {}).items()}
        self.metrics.last = dict(meta.get("metrics", {}))
        self.health = CheckpointHealth(self.start_step, meta.get("first_loss"))
        if config.probes.every_steps:
            self.probes = RunProbes(config, self.spec, self.program, self.data_config)
        self.watchdog = StepWatchdog(watchdog_timeout(config.get("watchdog_seconds", -1.0)),
                                     jax.process_index())
        self.profiler = Profiler(config.profile, self.workdir,
                                 os.path.join(self.workdir, "tensorboard"), self.is_main,
                                 jax.process_count() > 1, config.log_every_steps)

    def _prepare_workdir(self) -> None:
        """Metrics past the restored step set aside; earlier results kept beside; config."""
        workdir, start = self.workdir, self.start_step
        storage.makedirs(workdir)
        discarded = truncate_metrics(workdir, start)
        # a fresh start probes step 0 again: an earlier attempt's record of it goes too
        truncate_metrics(workdir, start if start else -1, "probes")
        if discarded:
            self.log(f"moved {discarded} metrics lines written after step {start} to "
                     "metrics.discarded.jsonl")
        final, diverged = read_final(workdir), read_diverged(workdir)
        if final is not None:  # --extend: the finished run's results are kept beside
            moved = keep_aside(os.path.join(workdir, FINAL_FILE), f"step{final.get('step')}")
            self.log(f"extending the finished run to step {self.total_steps}; its results "
                     f"are kept in {moved}")
        if diverged is not None:  # a changed config resumes a diverged run
            keep_aside(os.path.join(workdir, DIVERGED_FILE), f"step{diverged.get('step')}")
        storage.write_text(os.path.join(workdir, CONFIG_FILE),
                           self.config.to_json_best_effort(indent=2))

    def _announce(self, how: str) -> None:
        config, program, devices = self.config, self.program, self.devices
        for warning in setting_warnings(config, program):
            logging.warning("warning: %s", warning)
        self.log(f"nme_train: {config.model.name} ({program.num_params:,} parameters) on "
                 f"{config.data.name}; {self.total_steps} steps of batch {config.batch_size} "
                 f"({self.steps_per_epoch} steps/epoch); mesh {dict(program.mesh.shape)} over "
                 f"{len(devices)} {devices[0].platform} device(s); workdir {self.workdir}; "
                 f"{how}")
        if storage.is_remote(self.workdir):
            self.log("the workdir is in a bucket: metrics and TensorBoard events are stored "
                     "every 30 s and before each checkpoint; saves are not checked against "
                     "free space (a bucket has no such figure)")
        if self.changes:
            self.log("config changes since the checkpoint: " + "; ".join(
                f"{k}: {a!r} -> {b!r}" for k, (a, b) in self.changes.items()))

    # -- the step loop and its periodic actions ------------------------------
    def loop(self) -> dict[str, Any] | None:
        """Runs the steps; the early result when preempted, else None."""
        config, start, account = self.config, self.start_step, self.account
        self.host_batches = ReadAhead(train_batches(
            self.spec, self.data_config, config.batch_size, config.seed, start,
            jax.process_index(), jax.process_count()))
        batches = device_batches(self.host_batches, self.program.batch_sharding)
        self.started = time.perf_counter()
        account.restart()
        if self.probes and start == 0:
            self.probe(0)
        guard = self.guard
        if guard.signal_name is not None:  # before the first step: nothing new to save
            self.log(f"preempted by {guard.signal_name} before the first step (at step "
                     f"{start}); nothing to save; run the same command to "
                     f"{'resume' if start else 'start'}")
            return {**self.metrics.last, "preempted": True, "step": start}
        for step in range(start, self.total_steps):
            account.queue_depth(self.host_batches.ready())
            with account.phase("input"):
                batch = next(batches)
            with account.phase("profile"):
                self.profiler.before_step(step)
            # the first step compiles; its FLOPs come after (lowering is cached then). The
            # annotation marks the step in a profiler trace (TensorBoard's step-time view).
            with account.phase("compile" if step == start else "step"), \
                    jax.profiler.StepTraceAnnotation("train", step_num=step):
                self.state, step_metrics = self.program.train_step(self.state, batch)
                if step == start:
                    lowered = self.program.train_step.lower(self.state, batch)
                    self.metrics.progress.set_flops(
                        program_flops(lowered, lowered.compile(),
                                      config.get("grad_accum_steps", 1)), self.devices,
                        lambda b=batch: model_flops(self.program, self.state, b))
                self.fetch()
            self.ckpt.poll()  # a failed save stops the run now, not at the next save
            self.pending = (step + 1, step_metrics)
            with account.phase("profile"):
                self.profiler.after_step(step + 1, self.state)
            if self.after_step(step + 1, guard):
                return {**self.metrics.last, "preempted": True, "step": step + 1}
        with account.phase("step"):
            self.fetch()
        self.watchdog.close()
        if start < self.total_steps:  # the last save, still under the guard
            self.save(self.total_steps)
            if self.probes:
                self.probe(self.total_steps)
        return None

    def after_step(self, done: int, guard: PreemptionGuard) -> bool:
        """The periodic actions after step `done`; True when preempted (saved, stop)."""
        config, last = self.config, done >= self.total_steps
        every, stop = config.checkpoint.every_steps, guard.should_stop(done)
        if (every and done % every == 0 and not last) or stop:
            self.save(done)  # watched: a multi-process save waits on every process
        if stop:
            self.log(f"preempted by {guard.signal_name or 'the scheduler'} at step {done}; "
                     f"checkpoint saved in {self.ckpt.directory}; run the same command to "
                     "resume")
            return True
        if config.eval_every_steps and done % config.eval_every_steps == 0 and not last:
            self.fetch()
            with self.watchdog.paused(), self.account.phase("eval"):
                results = evaluate(self.program, self.state, self.eval_data)
            self.writer.write(done, results)
            self.metrics.progress.line(done, results)
            self.metrics.restart_timing(done)
        if self.probes and done % config.probes.every_steps == 0 and not last:
            with self.watchdog.paused():
                self.probe(done)
        return False

    def fetch(self) -> None:
        """Reads the pending step's metrics: the host waits for that step here."""
        if self.pending is not None:
            step, values = self.pending
            self.metrics.record(step, jax.device_get(values))
            self.health.observe(step, self.metrics.last_loss)
            self.watchdog.beat(step)
            self.pending = None

    def save(self, step: int) -> None:
        """Checkpoints the state after `step`, refusing non-finite parameters."""
        with self.account.phase("step"):
            self.fetch()
        with self.account.phase("checkpoint"):
            self._save(step)

    def _save(self, step: int) -> None:
        checked = jax.device_get(self.program.param_health(self.state.params))
        if not bool(checked["finite"]):
            raise Diverged(step, float("nan"), f"the parameters after step {step} are not finite")
        metrics = self.metrics
        self.writer.flush()  # in a bucket: the lines up to `step` are stored before it
        self.ckpt.save(step, self.state, {
            "step": step, "data_step": step, "seed": self.config.seed,
            "total_steps": self.total_steps, "metrics": metrics.last,
            "metric_window": metrics.window, "loss": metrics.last_loss,
            "first_loss": self.health.first_loss, "param_norm": float(checked["param_norm"]),
            "config": self.config_json,
        })
        self.health.saved(step)

    def probe(self, step: int) -> None:
        self.fetch()
        with self.account.phase("probe"):
            record = self.probes.probe(self.state, step,
                                       learning_rate=float(self.program.schedule(step)))
        write_record(self.workdir, record, writer=self.writer)
        self.log(probe_summary(record))
        self.metrics.restart_timing(step)

    # -- the end -------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """The final evaluation and final.json; the results."""
        total, trained = self.total_steps, self.start_step < self.total_steps
        with self.account.phase("eval"):
            results = evaluate(self.program, self.state, self.eval_data)
        results["train/wall_time_sec"] = time.perf_counter() - self.started
        results.update(self.account.run())  # where this start's wall time went
        if trained:
            self.writer.write(total, results)
        self.ckpt.close()  # every checkpoint is on disk before the run is marked finished
        if self.is_main:  # the marker of a finished run (nme-sweep skips it)
            write_json_atomic(os.path.join(self.workdir, FINAL_FILE), {
                "step": total, "epochs": total / self.steps_per_epoch,
                "num_params": self.program.num_params, **self.metrics.last, **results})
        self.log(f"final: step {total} | eval loss {results['eval/loss']:.4f} | eval accuracy "
                 f"{results['eval/accuracy']:.4f} | {results['train/wall_time_sec']:.1f} s")
        self.log(time_summary(results))
        return {**self.metrics.last, **results}

    def close(self) -> None:
        for resource in (self.profiler, self.host_batches, self.watchdog, self.ckpt,
                         self.writer, self.lock):
            if resource is not None:
                resource.close()

    def stop_diverged(self, e: Diverged) -> Diverged:
        """Records a divergence: metrics on disk, later checkpoints set aside, diverged.json."""
        self.metrics.flush(e.step - 1)
        try:
            self.ckpt.wait()  # finish the save in flight: it is judged with the others
        except CheckpointError:  # a failed save of a diverging run changes nothing here
            pass
        steps = self.ckpt.steps()
        anchor = self.health.last_sane(s for s in steps if s < e.step)
        moved = []
        if self.is_main:
            moved = [keep_aside(os.path.join(self.ckpt.directory, str(step)), "diverged")
                     for step in steps if anchor is None or step > anchor]
        message = diverged_message(e, self.workdir, anchor, len(moved),
                                   read_metrics(self.workdir) if self.is_main else [])
        if self.is_main:
            write_json_atomic(os.path.join(self.workdir, DIVERGED_FILE), {
                "step": e.step, "loss": str(e.loss), "message": message,
                "last_sane_checkpoint": anchor, "set_aside": [os.path.basename(m) for m in moved]})
        return Diverged(e.step, e.loss, message)


def diverged_message(e: Diverged, workdir: str, anchor: int | None, moved: int,
                     logged: list[dict]) -> str:
    """The one line a diverged run ends with: what is kept, where a rerun starts, the fix."""
    where = (f"the metrics up to step {logged[-1]['step']} are in {workdir}/metrics.jsonl"
             if logged else "no metrics had been logged")
    if anchor is not None:
        resume = f"the last sane checkpoint is step {anchor}; a rerun resumes there"
    else:
        resume = "no checkpoint is sane; a rerun starts from step 0"
    aside = (f" ({moved} later checkpoint(s) moved aside as checkpoints/<step>.diverged)"
             if moved else "")
    return (f"training diverged at step {e.step} (training loss {e.loss}); {where}; "
            f"{resume}{aside}. Change the config before rerunning: lower "
            "config.optimizer.learning_rate, add warmup (config.optimizer.warmup_epochs) or "
            "gradient clipping (config.optimizer.grad_clip_norm)")
