"""The objective, the train step and the eval step, as pure functions.

`make_objective` gives the training objective in the form the regularizers
and curvature probes use: a function of the parameters, computed from
`apply_fn(params, inputs)` and a per-example output loss. The train step
differentiates it once and applies the optax update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from nme_train.train.losses import accuracy, cross_entropy
from nme_train.train.state import TrainState

Objective = Callable[..., tuple[jax.Array, tuple[Any, jax.Array]]]


def _global_norm(tree: Any) -> jax.Array:
    """Euclidean norm of a pytree, as one vector."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def make_normalize(mean: Sequence[float], std: Sequence[float]) -> Callable[[jax.Array], jax.Array]:
    """uint8 images -> float32 standardised per channel (runs on the device)."""
    mean_255 = jnp.asarray(mean, jnp.float32) * 255.0
    inv_std_255 = 1.0 / (jnp.asarray(std, jnp.float32) * 255.0)

    def normalize(images: jax.Array) -> jax.Array:
        return (images.astype(jnp.float32) - mean_255) * inv_std_255

    return normalize


def make_objective(model: nn.Module, label_smoothing: float = 0.0) -> Objective:
    """objective(params, model_state, inputs, labels, rng) -> (loss, (new_model_state, logits)).

    `model_state` holds mutable collections such as BatchNorm statistics; in
    training mode they are updated from this (clean) forward pass.
    """

    def objective(params, model_state, inputs, labels, rng):
        del rng  # no stochastic layers yet; regularizers that need noise take it
        variables = {"params": params, **model_state}
        if model_state:
            logits, new_state = model.apply(variables, inputs, train=True,
                                            mutable=list(model_state))
        else:
            logits, new_state = model.apply(variables, inputs, train=True), model_state
        loss = jnp.mean(cross_entropy(logits, labels, label_smoothing))
        return loss, (new_state, logits)

    return objective


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
    objective: Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    normalize: Callable[[jax.Array], jax.Array],
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """train_step(state, batch) -> (new_state, metrics of this step)."""

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        inputs = normalize(batch["image"])
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (loss, (model_state, logits)), grads = grad_fn(
            state.params, state.model_state, inputs, batch["label"], rng
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(accuracy(logits, batch["label"])),
            "grad_norm": _global_norm(grads),
            "learning_rate": schedule(state.step),
        }
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
            "correct": jnp.sum(accuracy(logits, batch["label"]) * mask),
            "count": jnp.sum(mask),
        }

    return eval_step
