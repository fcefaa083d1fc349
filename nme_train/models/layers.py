"""Small building blocks shared by the architectures: the norm choice, activations."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def make_norm(
    batch_norm: bool, train: bool, dtype: Any, param_dtype: Any
) -> Callable[..., nn.Module | Callable]:
    """Returns a factory of normalisation layers.

    With `batch_norm=False` the factory gives the identity, so an architecture
    is written once and the config decides. BatchNorm uses batch statistics in
    training and the running averages in evaluation; its statistics live in
    the `batch_stats` collection (flax's convention).
    """
    if not batch_norm:
        return lambda **_: (lambda x: x)
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Mean over the spatial axes of an NHWC tensor."""
    return jnp.mean(x, axis=(1, 2))


# How a BatchNorm network is applied outside the training step (the probes' choice):
# with the statistics of the batch at hand, as the training step differentiates it, or
# with the running averages, as it is evaluated.
BATCH_NORM_MODES = ("batch_stats", "running_average")

PREACTIVATIONS = "preactivations"


def activate(module: nn.Module, fn: Callable[[jnp.ndarray], jnp.ndarray],
             x: jnp.ndarray) -> jnp.ndarray:
    """fn(x), keeping x in `module`'s "preactivations" collection when that is mutable.

    Applying a model with mutable=["preactivations"] returns every
    activation's input (per module, in call order); the activation-sparsity
    probe reads them. Otherwise flax's `sow` does nothing and costs nothing
    (and `init` never creates the collection).
    """
    if not module.is_initializing():
        module.sow(PREACTIVATIONS, "inputs", x)
    return fn(x)
