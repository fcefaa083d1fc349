"""Small building blocks shared by the architectures: the norm choice, activations."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def normalize_without_curvature(x: jnp.ndarray, axes: tuple[int, ...],
                                epsilon: float) -> jnp.ndarray:
    """(x - mean) / sqrt(var + eps) over `axes` in value and first derivative, with the
    second derivative that the batch statistics give it (they depend on x) dropped: its
    Jacobian, held constant, applied to x - stop_gradient(x).

    d xhat = (dx - mean(dx)) / s - xhat mean(xhat dx) / s, with s = sqrt(var + eps).
    """
    sg = jax.lax.stop_gradient
    mean = jnp.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    scale = jnp.sqrt(jnp.mean(centred**2, axis=axes, keepdims=True) + epsilon)
    xhat, s = sg(centred / scale), sg(scale)
    d = x - sg(x)
    linear = (d - jnp.mean(d, axis=axes, keepdims=True)
              - xhat * jnp.mean(xhat * d, axis=axes, keepdims=True)) / s
    return xhat + linear


class BatchNorm(nn.BatchNorm):
    """flax's BatchNorm whose batch statistics add no curvature (the NME split by source).

    The same variables (named as flax names them: this class is also called BatchNorm),
    the same value and running statistics (flax's own computation), the same first
    derivatives; in training mode the second derivatives that come from the statistics'
    dependence on the input are zero: the normalization is its Jacobian, held constant.
    The scale and offset act as in flax's (their products with the rest stay). A network
    with these and its activations' ablated twins has, at the same weights, the NME of
    products of weights across layers only.
    """

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        y = super().__call__(x, use_running_average, mask=mask)
        if nn.merge_param("use_running_average", self.use_running_average,
                          use_running_average) or self.is_initializing():
            return y  # running averages: constants, no statistics to differentiate
        feature = tuple(a % x.ndim for a in (self.axis if isinstance(self.axis, tuple)
                                             else (self.axis,)))
        axes = tuple(i for i in range(x.ndim) if i not in feature)
        params = self.variables["params"]
        z = normalize_without_curvature(x, axes, self.epsilon)
        if self.use_scale:
            z = z * params["scale"]
        if self.use_bias:
            z = z + params["bias"]
        z = z.astype(y.dtype)
        return jax.lax.stop_gradient(y) + (z - jax.lax.stop_gradient(z))


def make_norm(
    batch_norm: bool, train: bool, dtype: Any, param_dtype: Any, ablate: bool = False
) -> Callable[..., nn.Module | Callable]:
    """Returns a factory of normalisation layers.

    With `batch_norm=False` the factory gives the identity, so an architecture
    is written once and the config decides. BatchNorm uses batch statistics in
    training and the running averages in evaluation; its statistics live in
    the `batch_stats` collection (flax's convention). `ablate`: BatchNorm whose
    statistics add no curvature (the twin of the NME split by source).
    """
    if not batch_norm:
        return lambda **_: (lambda x: x)
    return functools.partial(
        BatchNorm if ablate else nn.BatchNorm,
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
