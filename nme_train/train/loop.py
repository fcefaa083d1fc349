"""train_and_evaluate: the training loop, top to bottom in named sections.

config -> mesh -> data -> model + optimizer -> sharded state -> compiled
steps -> loop (metrics of step N are read after step N+1 is dispatched, so
the host never stalls the device) -> final evaluation.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from nme_train import regularizers
from nme_train import sharding as shd
from nme_train.data import (
    DATASETS,
    DatasetSpec,
    default_data_dir,
    eval_batches,
    split_size,
    train_batches,
)
from nme_train.models import build_model
from nme_train.train.checkpoint import (
    CheckpointError,
    abstract_with_shardings,
    open_checkpointer,
)
from nme_train.train.metrics import (
    Diverged,
    MetricWriter,
    Progress,
    TrainMetrics,
    read_metrics,
    truncate_metrics,
)
from nme_train.train.optim import learning_rate_schedule, make_optimizer
from nme_train.train.preemption import PreemptionGuard
from nme_train.train.probing import RunProbes, write_record
from nme_train.train.probing import summary as probe_summary
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
from nme_train.train.step import (
    global_norm,
    init_state,
    make_eval_step,
    make_loss_fn,
    make_normalize,
    make_train_step,
)
from nme_train.train.watchdog import StepWatchdog, watchdog_timeout
from nme_train.validation import validate


def _device_batches(host_batches: Iterator[dict], sharding, depth: int = 2) -> Iterator[dict]:
    """Global device arrays, `depth` batches ahead of the consumer (overlaps the copies)."""
    queue: collections.deque = collections.deque()
    for batch in host_batches:
        queue.append(shd.global_batch(batch, sharding))
        if len(queue) > depth:
            yield queue.popleft()
    yield from queue


def _durations(config: Any, num_train: int) -> tuple[int, int]:
    steps_per_epoch = max(num_train // config.batch_size, 1)
    if config.num_train_steps > 0:
        return config.num_train_steps, steps_per_epoch
    return int(round(config.num_epochs * steps_per_epoch)), steps_per_epoch


def evaluate(eval_step, state, batches, sharding) -> dict[str, float]:
    """Mean loss and accuracy over the whole evaluation split (sums on device, one fetch)."""
    totals = None
    for batch in _device_batches(iter(batches), sharding):
        sums = eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"eval/loss": float(totals["loss"]) / count,
            "eval/accuracy": float(totals["correct"]) / count}


@dataclasses.dataclass
class Experiment:
    """Everything compiled for one config: the mesh, the sharded state factory, the steps."""

    model: Any
    mesh: Any
    batch_sharding: Any
    state_sharding: Any
    abstract_state: Any  # the TrainState as ShapeDtypeStructs (no memory)
    init: Callable[[], Any]  # () -> TrainState, created directly with its shardings
    train_step: Callable  # (state, batch) -> (state, metrics); jitted, state donated
    eval_step: Callable  # (state, batch) -> masked sums; jitted
    num_params: int


def build_experiment(
    config: Any, spec: DatasetSpec, devices: list, total_steps: int, steps_per_epoch: int
) -> Experiment:
    """Builds model, optimizer, objective, state shardings and the jitted steps."""
    mesh = shd.make_mesh(config.mesh, devices)
    batch_sharding = shd.batch_sharding(mesh)
    image_size = config.data.image_size or spec.image_size
    image_shape = (image_size, image_size, spec.channels)

    model = build_model(config.model, spec.num_classes)
    schedule = learning_rate_schedule(config.optimizer, total_steps, steps_per_epoch)
    tx = make_optimizer(config.optimizer, schedule)
    normalize = make_normalize(spec.mean, spec.std)
    transform = regularizers.from_config(config.regularizers)
    loss_fn = make_loss_fn(config.label_smoothing)

    init_fn = functools.partial(init_state, model, tx, config.seed, image_shape)
    abstract_state = jax.eval_shape(init_fn)
    state_sharding = shd.tree_shardings(abstract_state, mesh, config.sharding.fsdp_min_size)
    train_step = jax.jit(
        make_train_step(model, loss_fn, transform, tx, schedule, normalize),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, shd.replicated(mesh)),
        donate_argnums=0,
    )
    eval_step = jax.jit(make_eval_step(model, normalize),
                        in_shardings=(state_sharding, batch_sharding),
                        out_shardings=shd.replicated(mesh))
    return Experiment(
        model=model,
        mesh=mesh,
        batch_sharding=batch_sharding,
        state_sharding=state_sharding,
        abstract_state=abstract_state,
        init=jax.jit(init_fn, out_shardings=state_sharding),
        train_step=train_step,
        eval_step=eval_step,
        num_params=sum(int(np.prod(p.shape)) for p in jax.tree.leaves(abstract_state.params)),
    )


def _param_health(params: Any) -> dict[str, jax.Array]:
    """Global norm and finiteness of the parameters (recorded with each checkpoint)."""
    finite = [jax.numpy.all(jax.numpy.isfinite(x)) for x in jax.tree.leaves(params)]
    return {"param_norm": global_norm(params), "finite": jax.numpy.all(jax.numpy.stack(finite))}


def setting_warnings(config: Any, exp: Experiment) -> list[str]:
    """Settings that are accepted but do not do what they say on this model and mesh."""
    warnings = []
    fsdp = exp.mesh.shape["fsdp"]
    if fsdp > 1 and not any("fsdp" in tuple(s.spec) for s in
                            jax.tree.leaves(exp.state_sharding.params)):
        warnings.append(
            f"config.mesh.fsdp={fsdp}: no parameter has a dimension divisible by {fsdp} with "
            f"at least config.sharding.fsdp_min_size={config.sharding.fsdp_min_size} "
            "elements, so every parameter is replicated; use a divisor of the layer widths "
            "(e.g. a power of 2) or lower sharding.fsdp_min_size")
    steps = config.probes.lanczos_steps if config.probes.every_steps else 0
    if steps > exp.num_params:
        warnings.append(
            f"config.probes.lanczos_steps={steps} exceeds the model's {exp.num_params} "
            f"parameters; the probes use {exp.num_params} (Lanczos is exact at that size)")
    return warnings


def _remove_if_empty(paths: list[str]) -> None:
    """Removes directories this start created and left empty (innermost first)."""
    for path in paths:
        try:
            os.rmdir(path)
        except OSError:
            pass


def _stop_diverged(e: Diverged, workdir: str, ckpt, health: CheckpointHealth,
                   metrics: TrainMetrics, is_main: bool) -> Diverged:
    """Records a divergence: metrics on disk, later checkpoints set aside, diverged.json."""
    metrics.flush(e.step - 1)
    try:
        ckpt.wait()  # finish the save in flight: it is judged with the others
    except CheckpointError:  # a failed save of a diverging run changes nothing here
        pass
    steps = ckpt.steps()
    anchor = health.last_sane(s for s in steps if s < e.step)
    moved = []
    if is_main:
        for step in steps:
            if anchor is None or step > anchor:
                moved.append(keep_aside(os.path.join(ckpt.directory, str(step)), "diverged"))
    logged = read_metrics(workdir) if is_main else []
    where = (f"the metrics up to step {logged[-1]['step']} are in {workdir}/metrics.jsonl"
             if logged else "no metrics had been logged")
    if anchor is not None:
        resume = f"the last sane checkpoint is step {anchor}; a rerun resumes there"
    else:
        resume = "no checkpoint is sane; a rerun starts from step 0"
    aside = (f" ({len(moved)} later checkpoint(s) moved aside as checkpoints/<step>.diverged)"
             if moved else "")
    message = (f"training diverged at step {e.step} (training loss {e.loss}); {where}; "
               f"{resume}{aside}. Change the config before rerunning: lower "
               "config.optimizer.learning_rate, add warmup (config.optimizer.warmup_epochs) or "
               "gradient clipping (config.optimizer.grad_clip_norm)")
    if is_main:
        write_json_atomic(os.path.join(workdir, DIVERGED_FILE), {
            "step": e.step, "loss": str(e.loss), "message": message,
            "last_sane_checkpoint": anchor, "set_aside": [os.path.basename(m) for m in moved]})
    return Diverged(e.step, e.loss, message)


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
    # -- config and the workdir policy (before anything is built) ----------
    devices = jax.devices() if devices is None else list(devices)
    validate(config, len(devices), jax.process_count())
    is_main = jax.process_index() == 0
    data_config = config.data.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.data_dir = config.data.data_dir or default_data_dir()
    spec = DATASETS[config.data.name]
    train_split = data_config.train_split or spec.train_split
    num_train = split_size(spec, train_split, data_config.data_dir)
    total_steps, steps_per_epoch = _durations(config, num_train)
    config_json = json.loads(config.to_json_best_effort())
    nothing_to_do = check_rerun(workdir, config_json, total_steps, extend)
    if nothing_to_do:
        if is_main:
            print(nothing_to_do, flush=True)
        return {**read_final(workdir), "nothing_to_do": True}

    # -- data, mesh, model, optimizer, sharded state, compiled steps -------
    eval_data = eval_batches(spec, data_config, config.eval_batch_size,
                             jax.process_index(), jax.process_count())
    exp = build_experiment(config, spec, devices, total_steps, steps_per_epoch)

    # -- resume, warm-start or initialise (checks before writing anything) --
    created = [d for d in (os.path.join(workdir, "checkpoints"), workdir)
               if not os.path.exists(d)]
    ckpt = open_checkpointer(workdir, config.checkpoint)
    try:
        restored = restore_latest(workdir, config, ckpt, abstract_with_shardings(
            exp.abstract_state, exp.state_sharding))
        meta: dict = {}
        changes: dict = {}
        if restored is not None:
            state, meta, changes = restored
            start_step = int(meta["step"])
            how = f"resumed from the checkpoint at step {start_step}"
            if config.init_from:
                how += f" (config.init_from={config.init_from!r} is ignored on a resume)"
        elif config.init_from:
            state, source = warm_start(config.init_from, exp.init(), exp.state_sharding)
            start_step, how = 0, f"warm-started from {source}"
        else:
            state, start_step, how = exp.init(), 0, "initialised"
    except BaseException:
        ckpt.close()
        if is_main:
            _remove_if_empty(created)
        raise

    # -- outputs -----------------------------------------------------------
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        discarded = truncate_metrics(workdir, start_step)
        truncate_metrics(workdir, start_step, "probes")
        final, diverged = read_final(workdir), read_diverged(workdir)
        if final is not None:  # --extend: the finished run's results are kept beside
            moved = keep_aside(os.path.join(workdir, FINAL_FILE), f"step{final.get('step')}")
            print(f"extending the finished run to step {total_steps}; its results are kept "
                  f"in {moved}", flush=True)
        if diverged is not None:  # a changed config resumes a diverged run
            keep_aside(os.path.join(workdir, DIVERGED_FILE), f"step{diverged.get('step')}")
        with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))
        for warning in setting_warnings(config, exp):
            print(f"warning: {warning}", flush=True)
        print(f"nme_train: {config.model.name} ({exp.num_params:,} parameters) on "
              f"{config.data.name}; {total_steps} steps of batch {config.batch_size} "
              f"({steps_per_epoch} steps/epoch); mesh {dict(exp.mesh.shape)} over "
              f"{len(devices)} {devices[0].platform} device(s); workdir {workdir}; {how}",
              flush=True)
        if changes and restored is not None:
            print("config changes since the checkpoint: " + "; ".join(
                f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()), flush=True)
        if discarded:
            print(f"moved {discarded} metrics lines written after step {start_step} to "
                  "metrics.discarded.jsonl", flush=True)
    writer = MetricWriter(workdir, enabled=is_main)
    metrics = TrainMetrics(writer, Progress(total_steps, config.batch_size, enabled=is_main),
                           config.log_every_steps, total_steps, workdir)
    metrics.window = {k: list(v) for k, v in meta.get("metric_window", {}).items()}
    metrics.last = dict(meta.get("metrics", {}))
    health = CheckpointHealth(start_step, meta.get("first_loss"))
    probes = RunProbes(config, spec, exp, data_config) if config.probes.every_steps else None
    param_health = jax.jit(_param_health, out_shardings=shd.replicated(exp.mesh))

    def probe(step: int) -> None:
        record = probes.probe(state, step)
        write_record(workdir, record, writer=writer)
        if is_main:
            print(probe_summary(record), flush=True)
        metrics.restart_timing(step)

    def save(step: int) -> None:
        checked = jax.device_get(param_health(state.params))
        if not bool(checked["finite"]):
            raise Diverged(step, float("nan"), f"the parameters after step {step} are not finite")
        ckpt.save(step, state, {
            "step": step, "data_step": step, "seed": config.seed, "total_steps": total_steps,
            "metrics": metrics.last, "metric_window": metrics.window,
            "loss": metrics.last_loss, "first_loss": health.first_loss,
            "param_norm": float(checked["param_norm"]), "config": config_json,
        })
        health.saved(step)

    # -- loop --------------------------------------------------------------
    host_batches = train_batches(spec, data_config, config.batch_size, config.seed, start_step,
                                 jax.process_index(), jax.process_count())
    batches = _device_batches(host_batches, exp.batch_sharding)
    every = config.checkpoint.every_steps
    started = time.perf_counter()
    pending = None  # (step, device metrics): read after the next step is dispatched
    watchdog = StepWatchdog(watchdog_timeout(config.get("watchdog_seconds", -1.0)),
                            jax.process_index())

    def fetch() -> None:  # the previous step's metrics: the host waits for that step here
        nonlocal pending
        if pending is not None:
            metrics.record(pending[0], jax.device_get(pending[1]))
            health.observe(pending[0], metrics.last_loss)
            watchdog.beat(pending[0])
            pending = None

    try:
        if probes and start_step == 0:
            probe(0)
        with PreemptionGuard() as guard:
            for step in range(start_step, total_steps):
                state, step_metrics = exp.train_step(state, next(batches))
                fetch()
                ckpt.poll()  # a failed save stops the run now, not at the next save
                pending, done = (step + 1, step_metrics), step + 1
                stop = guard.should_stop(done)
                if (every and done % every == 0 and done < total_steps) or stop:
                    fetch()
                    save(done)  # watched: a multi-process save waits on every process
                if stop:
                    if is_main:
                        print(f"preempted by {guard.signal_name or 'the scheduler'} at step "
                              f"{done}; checkpoint saved in {ckpt.directory}; run the same "
                              "command to resume", flush=True)
                    return {**metrics.last, "preempted": True, "step": done}
                if config.eval_every_steps and done % config.eval_every_steps == 0 \
                        and done < total_steps:
                    fetch()
                    with watchdog.paused():
                        results = evaluate(exp.eval_step, state, eval_data, exp.batch_sharding)
                    writer.write(done, results)
                    metrics.progress.line(done, results)
                    metrics.restart_timing(done)
                if probes and done % config.probes.every_steps == 0 and done < total_steps:
                    fetch()
                    with watchdog.paused():
                        probe(done)
            fetch()
            watchdog.close()
            if start_step < total_steps:
                save(total_steps)
                if probes:
                    probe(total_steps)

        # -- final evaluation ----------------------------------------------
        results = evaluate(exp.eval_step, state, eval_data, exp.batch_sharding)
        results["train/wall_time_sec"] = time.perf_counter() - started
        if start_step < total_steps:
            writer.write(total_steps, results)
        ckpt.close()
    except Diverged as e:  # mark the run (tools/sweep.py counts it) and stop cleanly
        raise _stop_diverged(e, workdir, ckpt, health, metrics, is_main) from None
    finally:
        watchdog.close()
        ckpt.close()
        writer.close()
    if is_main:  # the marker of a finished run (tools/sweep.py skips it, summarize reads it)
        write_json_atomic(os.path.join(workdir, FINAL_FILE), {
            "step": total_steps, "epochs": total_steps / steps_per_epoch,
            "num_params": exp.num_params, **metrics.last, **results})
        print(f"final: step {total_steps} | eval loss {results['eval/loss']:.4f} | eval accuracy "
              f"{results['eval/accuracy']:.4f} | {results['train/wall_time_sec']:.1f} s",
              flush=True)
    return {**metrics.last, **results}
