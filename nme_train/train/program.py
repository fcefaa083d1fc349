"""The compiled bundle of one config: mesh, model, sharded state and jitted steps.

`build_program` is shared by the trainer, the dry run (nme_train.train.dry_run),
the offline probe (nme-probe) and the step benchmark: everything that
depends on the config and the devices but not on a workdir.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from nme_train import regularizers
from nme_train import sharding as shd
from nme_train.data import DatasetSpec
from nme_train.models import build_ablated_model, build_model
from nme_train.optim import learning_rate_schedule, make_optimizer
from nme_train.train.step import (
    init_state,
    make_eval_step,
    make_loss_fn,
    make_normalize,
    make_train_step,
)


@dataclasses.dataclass
class Program:
    """Everything compiled for one config: the mesh, the sharded state factory, the steps."""

    model: Any
    mesh: Any
    batch_sharding: Any
    state_sharding: Any
    abstract_state: Any  # the TrainState as ShapeDtypeStructs (no memory)
    init: Callable[[], Any]  # () -> TrainState, created directly with its shardings
    train_step: Callable  # (state, batch) -> (state, metrics); jitted, state donated
    eval_step: Callable  # (state, batch) -> masked sums; jitted
    param_health: Callable  # params -> {"param_norm", "finite"}; jitted, replicated out
    num_params: int
    schedule: Callable[[int], Any]  # step -> learning rate


def _param_health(params: Any) -> dict[str, jax.Array]:
    """Global norm and finiteness of the parameters (recorded with each checkpoint)."""
    finite = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]
    return {"param_norm": otu.tree_norm(params), "finite": jnp.all(jnp.stack(finite))}


def build_program(
    config: Any, spec: DatasetSpec, devices: list, total_steps: int, steps_per_epoch: int,
    rolled_microbatch_loop: bool | None = None,
) -> Program:
    """Builds model, optimizer, objective, state shardings and the jitted steps.

    With config.grad_accum_steps > 1 the step loops over microbatches: a `lax.scan`, except
    on CPU devices where it is unrolled (regularizers.accumulation.unrolled_loop);
    `rolled_microbatch_loop` overrides that (the dry run: the scan, as accelerators run it).
    """
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
        make_train_step(model, loss_fn, transform, tx, schedule, normalize,
                        build_ablated_model(config.model, spec.num_classes),
                        regularizers.Microbatching(
                            config.get("grad_accum_steps", 1), len(devices),
                            shd.microbatch_sharding(mesh),
                            unroll=not rolled_microbatch_loop
                            if rolled_microbatch_loop is not None
                            else devices[0].platform == "cpu")),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, shd.replicated(mesh)),
        donate_argnums=0,
    )
    eval_step = jax.jit(make_eval_step(model, normalize),
                        in_shardings=(state_sharding, batch_sharding),
                        out_shardings=shd.replicated(mesh))
    return Program(
        model=model,
        mesh=mesh,
        batch_sharding=batch_sharding,
        state_sharding=state_sharding,
        abstract_state=abstract_state,
        init=jax.jit(init_fn, out_shardings=state_sharding),
        train_step=train_step,
        eval_step=eval_step,
        param_health=jax.jit(_param_health, out_shardings=shd.replicated(mesh)),
        num_params=sum(int(np.prod(p.shape)) for p in jax.tree.leaves(abstract_state.params)),
        schedule=schedule,
    )


def training_length(config: Any, num_train: int) -> tuple[int, int]:
    """(total steps, steps per epoch) of a run on `num_train` training examples."""
    steps_per_epoch = max(num_train // config.batch_size, 1)
    if config.num_train_steps > 0:
        return config.num_train_steps, steps_per_epoch
    return int(round(config.num_epochs * steps_per_epoch)), steps_per_epoch


def device_batches(host_batches: Iterator[dict], sharding, depth: int = 2) -> Iterator[dict]:
    """Global device arrays, `depth` batches ahead of the consumer (overlaps the copies)."""
    queue: collections.deque = collections.deque()
    for batch in host_batches:
        queue.append(shd.global_batch(batch, sharding))
        if len(queue) > depth:
            yield queue.popleft()
    yield from queue


def evaluate(program: Program, state: Any, batches: Any) -> dict[str, float]:
    """Mean loss and accuracy over the whole evaluation split (sums on device, one fetch)."""
    totals = None
    for batch in device_batches(iter(batches), program.batch_sharding):
        sums = program.eval_step(state, batch)
        totals = sums if totals is None else otu.tree_add(totals, sums)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"eval/loss": float(totals["loss"]) / count,
            "eval/accuracy": float(totals["correct"]) / count}


def setting_warnings(config: Any, program: Program) -> list[str]:
    """Settings that are accepted but do not do what they say on this model and mesh."""
    warnings = []
    fsdp = program.mesh.shape["fsdp"]
    if fsdp > 1 and not any("fsdp" in tuple(s.spec) for s in
                            jax.tree.leaves(program.state_sharding.params)):
        warnings.append(
            f"config.mesh.fsdp={fsdp}: no parameter has a dimension divisible by {fsdp} with "
            f"at least config.sharding.fsdp_min_size={config.sharding.fsdp_min_size} "
            "elements, so every parameter is replicated; use a divisor of the layer widths "
            "(e.g. a power of 2) or lower sharding.fsdp_min_size")
    steps = config.probes.lanczos_steps if config.probes.every_steps else 0
    if steps > program.num_params:
        warnings.append(
            f"config.probes.lanczos_steps={steps} exceeds the model's {program.num_params} "
            f"parameters; the probes use {program.num_params} (Lanczos is exact at that size)")
    return warnings
