"""train_and_evaluate: the training loop, top to bottom in named sections.

config -> mesh -> data -> model + optimizer -> sharded state -> compiled
steps -> loop (metrics of step N are read after step N+1 is dispatched, so
the host never stalls the device) -> final evaluation.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

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
from nme_train.train.metrics import MetricWriter, Progress
from nme_train.train.optim import learning_rate_schedule, make_optimizer
from nme_train.train.step import (
    init_state,
    make_eval_step,
    make_normalize,
    make_objective,
    make_train_step,
)
from nme_train.validation import validate


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked (e.g. it already holds a run)."""


def _check_workdir(workdir: str) -> None:
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        raise WorkdirError(
            f"workdir {workdir!r} already holds a run (metrics.jsonl). Resuming needs "
            "checkpoints, which this version of the trainer does not write yet; pass a new "
            "--workdir, or remove this one to start over."
        )


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
    objective = make_objective(model, config.label_smoothing)

    init_fn = functools.partial(init_state, model, tx, config.seed, image_shape)
    abstract_state = jax.eval_shape(init_fn)
    state_sharding = shd.tree_shardings(abstract_state, mesh, config.sharding.fsdp_min_size)
    train_step = jax.jit(
        make_train_step(objective, tx, schedule, normalize),
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
        init=jax.jit(init_fn, out_shardings=state_sharding),
        train_step=train_step,
        eval_step=eval_step,
        num_params=sum(int(np.prod(p.shape)) for p in jax.tree.leaves(abstract_state.params)),
    )


def train_and_evaluate(config: Any, workdir: str, devices: list | None = None) -> dict[str, float]:
    """Trains and evaluates the model of `config`, writing outputs into `workdir`.

    `devices` restricts the mesh to a subset of the devices (default: all).
    Returns the final metrics (eval/accuracy, eval/loss, train/loss, ...).
    """
    # -- config and workdir ------------------------------------------------
    devices = jax.devices() if devices is None else list(devices)
    validate(config, len(devices), jax.process_count())
    _check_workdir(workdir)
    is_main = jax.process_index() == 0
    data_config = config.data.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.data_dir = config.data.data_dir or default_data_dir()
    spec = DATASETS[config.data.name]

    # -- data ------------------------------------------------------------
    train_split = data_config.train_split or spec.train_split
    num_train = split_size(spec, train_split, data_config.data_dir)
    total_steps, steps_per_epoch = _durations(config, num_train)
    eval_data = eval_batches(spec, data_config, config.eval_batch_size,
                             jax.process_index(), jax.process_count())

    # -- mesh, model, optimizer, sharded state, compiled steps --------------
    exp = build_experiment(config, spec, devices, total_steps, steps_per_epoch)
    state = exp.init()
    train_step, eval_step, batch_sharding = exp.train_step, exp.eval_step, exp.batch_sharding

    # -- outputs -----------------------------------------------------------
    writer = MetricWriter(workdir, enabled=is_main)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))
        print(f"nme_train: {config.model.name} ({exp.num_params:,} parameters) on "
              f"{config.data.name}; {total_steps} steps of batch {config.batch_size} "
              f"({steps_per_epoch} steps/epoch); mesh {dict(exp.mesh.shape)} over "
              f"{len(devices)} {devices[0].platform} device(s); workdir {workdir}",
              flush=True)
    progress = Progress(total_steps, config.batch_size, enabled=is_main)

    # -- loop --------------------------------------------------------------
    start_step = int(jax.device_get(state.step))
    host_batches = train_batches(spec, data_config, config.batch_size, config.seed, start_step,
                                 jax.process_index(), jax.process_count())
    batches = _device_batches(host_batches, batch_sharding)
    window: dict[str, list[float]] = collections.defaultdict(list)
    last_train: dict[str, float] = {}

    def record(step: int, metrics: Any) -> None:
        """Host side of step `step` (1-based count of updates done)."""
        values = jax.device_get(metrics)
        loss = float(values["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss} at step {step}; the metrics of earlier steps are in "
                f"{workdir}/metrics.jsonl. Lower config.optimizer.learning_rate, add warmup "
                "(config.optimizer.warmup_epochs) or gradient clipping "
                "(config.optimizer.grad_clip_norm)."
            )
        for key, value in values.items():
            window[key].append(float(value))
        if step == start_step + 1:
            progress.start(step)  # the first step includes compilation: not timed
            window.clear()
        elif (config.log_every_steps and step % config.log_every_steps == 0) or step == total_steps:
            line = {f"train/{k}": float(np.mean(v)) for k, v in window.items()}
            line.update(progress.rates(step))
            writer.write(step, line)
            progress.line(step, line)
            last_train.update(line)
            window.clear()

    started = time.perf_counter()
    pending = None
    for step in range(start_step, total_steps):
        state, metrics = train_step(state, next(batches))
        if pending is not None:
            record(*pending)
        pending = (step + 1, metrics)
        done = step + 1
        if config.eval_every_steps and done % config.eval_every_steps == 0 and done < total_steps:
            record(*pending)
            pending = None
            results = evaluate(eval_step, state, eval_data, batch_sharding)
            writer.write(done, results)
            progress.line(done, results)
            progress.start(done)
    if pending is not None:
        record(*pending)

    # -- final evaluation --------------------------------------------------
    results = evaluate(eval_step, state, eval_data, batch_sharding)
    results["train/wall_time_sec"] = time.perf_counter() - started
    writer.write(total_steps, results)
    if is_main:
        print(f"final: step {total_steps} | eval loss {results['eval/loss']:.4f} | eval accuracy "
              f"{results['eval/accuracy']:.4f} | {results['train/wall_time_sec']:.1f} s",
              flush=True)
    writer.close()
    return {**last_train, **results}
