"""Weight noise: the gradient of L(theta + eps), eps ~ N(0, sigma^2 I), applied to theta.

In expectation (Bishop, 1995) E L(theta + eps) ~ L + (sigma^2 / 2) Tr(H)
= L + (sigma^2 / 2) (Tr G + Tr NME): the NME enters through the trace.
The noise is drawn from the step's key, so a resumed run draws the same.
The model state (BatchNorm statistics) comes from the noisy pass, the only
one this method makes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from nme_train.regularizers.accumulation import accumulated_value_and_grad
from nme_train.regularizers.objective import Objective, Transform, add_metrics
from nme_train.regularizers.registry import register_regularizer


def random_like(sampler, rng: jax.Array, tree):
    """`sampler(key, shape, float32)` drawn for every leaf of `tree`, one key per leaf."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(rng, len(leaves))
    return jax.tree.unflatten(treedef, [
        sampler(k, x.shape, jnp.float32).astype(x.dtype) for k, x in zip(keys, leaves)])


def gaussian_like(rng: jax.Array, tree):
    """Standard normal noise shaped like `tree`."""
    return random_like(jax.random.normal, rng, tree)


def weight_noise(sigma: float) -> Transform:
    """Evaluates the objective at parameters perturbed by N(0, sigma^2) noise."""
    if sigma < 0:
        raise ValueError(f"weight_noise: sigma={sigma} must be >= 0")

    def transform(obj: Objective) -> Objective:
        def value(params, batch, rng):
            noise_rng, rng = jax.random.split(rng)
            noise = jax.lax.stop_gradient(gaussian_like(noise_rng, params))
            loss, aux = obj(otu.tree_add_scale(params, sigma, noise), batch, rng)
            return loss, add_metrics(aux, **{"weight_noise/loss": loss})

        def accumulate(params, microbatches, rng):
            """The same noise for every microbatch: the wrapped objective's accumulation at
            theta + eps (its gradient there is the update)."""
            noise_rng, rng = jax.random.split(rng)
            noise = jax.lax.stop_gradient(gaussian_like(noise_rng, params))
            (loss, aux), grads = accumulated_value_and_grad(
                obj, otu.tree_add_scale(params, sigma, noise), microbatches, rng)
            return (loss, add_metrics(aux, **{"weight_noise/loss": loss})), grads

        return obj.with_value(value, accumulate)

    return transform


register_regularizer("weight_noise", weight_noise, example={"sigma": 0.01})
