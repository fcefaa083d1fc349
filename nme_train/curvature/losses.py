"""Output losses with closed-form residuals and output-space Hessians.

The curvature operators need, at the model outputs z of a batch of n
examples, the residual r = dL/dz and products with H_z = d^2 L / dz^2 of
the batch-mean loss L. For the two losses of the paper both are closed
forms (per example, divided by n for the mean):

  softmax cross-entropy with targets t (one-hot, or smoothed):
      r = p - t,   H_z u = p * u - p (p . u)        (p = softmax(z))
  mean squared error, L = mean over examples and outputs of (z - y)^2:
      r = 2 (z - y) / d,   H_z u = 2 u / d          (d = output dimension)

Any other loss can be given as a plain callable `loss(outputs, targets)`;
the operators then differentiate it with autodiff (output space only, so
it stays cheap).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OutputLoss:
    """A batch-mean loss of the outputs with its closed-form derivatives."""

    value: Callable[[jax.Array, jax.Array], jax.Array]  # (z, targets) -> scalar
    residual: Callable[[jax.Array, jax.Array], jax.Array]  # dL/dz
    hessian_product: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (z, t, u) -> H_z u
    name: str = "loss"

    def __call__(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return self.value(outputs, targets)


def target_distribution(logits: jax.Array, targets: jax.Array, smoothing: float = 0.0
                        ) -> jax.Array:
    """Integer labels (one-hot encoded) or distributions, smoothed towards uniform.

    The one label-smoothing path of the project: t (1 - s) + s / K
    (optax.smooth_labels), for the training loss and the probes alike.
    """
    if jnp.issubdtype(targets.dtype, jnp.integer):
        targets = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    return optax.smooth_labels(targets, smoothing) if smoothing else targets


def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
    """Per-example softmax cross-entropy against (smoothed) labels or distributions."""
    return optax.softmax_cross_entropy(logits, target_distribution(logits, targets,
                                                                   label_smoothing))


def softmax_cross_entropy(label_smoothing: float = 0.0) -> OutputLoss:
    """Mean softmax cross-entropy; targets are integer labels or distributions."""

    def value(z, targets):
        return jnp.mean(cross_entropy(z, targets, label_smoothing))

    def residual(z, targets):
        t = target_distribution(z, targets, label_smoothing)
        return (jax.nn.softmax(z) - t) / z.shape[0]

    def hessian_product(z, targets, u):
        del targets
        p = jax.nn.softmax(z)
        return (p * u - p * jnp.sum(p * u, axis=-1, keepdims=True)) / z.shape[0]

    return OutputLoss(value, residual, hessian_product, "softmax_cross_entropy")


def mean_squared_error() -> OutputLoss:
    """Mean over examples and outputs of (z - y)^2; integer targets are one-hot encoded."""

    def dense_targets(z, targets):
        if jnp.issubdtype(targets.dtype, jnp.integer) and targets.ndim == z.ndim - 1:
            return jax.nn.one_hot(targets, z.shape[-1], dtype=z.dtype)
        return targets.astype(z.dtype)

    def value(z, targets):
        return jnp.mean((z - dense_targets(z, targets)) ** 2)

    def residual(z, targets):
        return 2.0 * (z - dense_targets(z, targets)) / z.size

    def hessian_product(z, targets, u):
        del targets
        return 2.0 * u / z.size

    return OutputLoss(value, residual, hessian_product, "mean_squared_error")


def as_output_loss(loss: OutputLoss | Callable) -> OutputLoss:
    """`loss` itself, or a plain callable wrapped with autodiff derivatives."""
    if isinstance(loss, OutputLoss):
        return loss

    def residual(z, targets):
        return jax.grad(lambda y: loss(y, targets))(z)

    def hessian_product(z, targets, u):
        return jax.jvp(lambda y: residual(y, targets), (z,), (u,))[1]

    return OutputLoss(loss, residual, hessian_product, getattr(loss, "__name__", "loss"))
