"""The objective, the train step and the eval step, as pure functions.

`make_objective` gives the training objective in the form the regularizers
and curvature probes use (nme_train.regularizers.Objective), built from
`apply_fn(params, inputs)` and the output loss. The train step
differentiates the regularized objective once and applies the optax update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from nme_train import regularizers as reg
from nme_train.curvature.losses import cross_entropy
from nme_train.train.state import TrainState


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example 0/1 correctness of the arg-max prediction."""
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def make_normalize(mean: Sequence[float], std: Sequence[float]) -> Callable[[jax.Array], jax.Array]:
    """uint8 images -> float32 standardised per channel (runs on the device)."""
    mean_255 = jnp.asarray(mean, jnp.float32) * 255.0
    inv_std_255 = 1.0 / (jnp.asarray(std, jnp.float32) * 255.0)

    def normalize(images: jax.Array) -> jax.Array:
        return (images.astype(jnp.float32) - mean_255) * inv_std_255

    return normalize


def make_loss_fn(label_smoothing: float = 0.0) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """(logits, integer labels) -> mean softmax cross-entropy (with optional smoothing)."""
    def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
        return jnp.mean(cross_entropy(logits, labels, label_smoothing))

    return loss_fn


def make_objective(model: nn.Module, model_state: Any, loss_fn: Callable,
                   transform: reg.Transform, twin: nn.Module | None = None) -> reg.Objective:
    """The (regularized) training objective of a flax model, as nme_train.regularizers sees it.

    In training mode BatchNorm normalises with the batch's own statistics, so
    the outputs are a function of the parameters alone; `model_state` only
    gives the collections to update. The objective's aux carries the new
    state from the clean pass (see each regularizer for which pass that is).
    `twin` is the model with its activations' ablated twins (models.build_ablated_model),
    for the regularizers that split the curvature by source.
    """
    def applied(module):
        if model_state:
            def apply_fn(params, inputs):
                return module.apply({"params": params, **model_state}, inputs, train=True,
                                    mutable=list(model_state))
        else:
            def apply_fn(params, inputs):
                return module.apply({"params": params}, inputs, train=True)
        return apply_fn

    return transform(reg.objective(applied(model), loss_fn, has_state=bool(model_state),
                                   ablated_apply_fn=None if twin is None else applied(twin)))


def init_state(
    model: nn.Module, tx: optax.GradientTransformation, seed: int, image_shape: Sequence[int]
) -> TrainState:
    """Initialises parameters, optimizer state and model state (call under jit)."""
    rng = jax.random.PRNGKey(seed)
    init_rng, run_rng = jax.random.split(rng)
    variables = dict(model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32),
                                train=False))
    params = variables.pop("params")
    model_state = variables  # e.g. {"batch_stats": ...}; empty without BatchNorm
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=model_state,
        rng=run_rng,
    )


def make_train_step(
    model: nn.Module,
    loss_fn: Callable,
    transform: reg.Transform,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    normalize: Callable[[jax.Array], jax.Array],
    twin: nn.Module | None = None,
    accumulate: reg.Microbatching | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """train_step(state, batch) -> (new_state, metrics of this step).

    The update is the gradient of the regularized objective; the metrics are
    the clean data loss and accuracy, the objective's value, the gradient
    norm, the learning rate, and every regularizer's diagnostics.
    `accumulate`: the batch in k microbatches, each taking its part of every one of the
    batch's shards (devices) (regularizers/accumulation.py: the same update, one
    microbatch's activations live).
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        obj = make_objective(model, state.model_state, loss_fn, transform, twin)
        if accumulate is not None and accumulate.k > 1:
            batch = jax.lax.with_sharding_constraint(
                reg.split_microbatches(batch, accumulate.k, accumulate.shards),
                accumulate.sharding)
            data = {"inputs": normalize(batch["image"]), "targets": batch["label"]}
            with reg.unrolled_loop(accumulate.unroll):
                (value, aux), grads = reg.accumulated_value_and_grad(obj, state.params, data,
                                                                     rng)
            batch = {"label": batch["label"].reshape(-1)}  # the outputs' order
        else:
            data = {"inputs": normalize(batch["image"]), "targets": batch["label"]}
            (value, aux), grads = jax.value_and_grad(obj, has_aux=True)(state.params, data,
                                                                         rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **aux["metrics"],
            "objective": value,
            "accuracy": jnp.mean(correct(aux["outputs"], batch["label"])),
            "grad_norm": otu.tree_norm(grads),
            "learning_rate": schedule(state.step),
        }
        model_state = aux["state"] if state.model_state else state.model_state
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=model_state)
        return new_state, metrics

    return train_step


def make_eval_step(
    model: nn.Module, normalize: Callable[[jax.Array], jax.Array]
) -> Callable[[TrainState, dict], dict]:
    """eval_step(state, batch) -> masked sums {loss, correct, count} over the batch."""

    def eval_step(state: TrainState, batch: dict) -> dict:
        variables = {"params": state.params, **state.model_state}
        logits = model.apply(variables, normalize(batch["image"]), train=False)
        mask = batch["mask"]
        return {
            "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
            "correct": jnp.sum(correct(logits, batch["label"]) * mask),
            "count": jnp.sum(mask),
        }

    return eval_step
