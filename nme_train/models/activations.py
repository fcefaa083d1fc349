"""Activation functions chosen by name from the config.

Every activation here is a plain `jnp` function (or a `jax.custom_jvp` rule in
later additions), so it stays differentiable to any order: the regularizers
differentiate through the model two or three times.

The activation family of the paper ("Activations and the interventions on
their second derivative" in the project's notes on the paper):
  relu                 max(x, 0)
  gelu                 x * Phi(x), exact erf form (not the tanh approximation)
  beta_gelu            x * Phi(beta * x): beta = 1 is GELU, beta -> inf tends to ReLU;
                       sigma''(x) = beta * phi(beta x) * (2 - beta^2 x^2)
  gelu_nme_ablated     value and first derivative of GELU, second derivative 0
  relu_synthetic_nme   value and first derivative of ReLU, second derivative
                       that of beta-GELU (a surrogate NME signal)
  relu_spike_nme       value and first derivative of ReLU, second derivative
                       beta phi(beta x) >= 0: the sigma'' of ReLU smoothed by a
                       Gaussian of width 1/beta (E[relu(x + z / beta)], z ~ N(0, 1)),
                       a non-negative spike of unit mass like ReLU's own delta
The two interventions are `jax.custom_jvp` rules; JAX differentiates the
rule itself for higher orders, so they hold at every order (the trace
penalties differentiate through the model three times).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from nme_train.registry import Registry

Activation = Callable[[jax.Array], jax.Array]

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def relu(x: jax.Array) -> jax.Array:
    """Rectified linear unit, max(x, 0)."""
    return jnp.maximum(x, 0)


def beta_gelu(x: jax.Array, beta: float = 1.0) -> jax.Array:
    """x * Phi(beta x) with Phi the standard normal CDF (exact erf form)."""
    return x * 0.5 * (1.0 + jax.lax.erf(beta * x * _SQRT_HALF))


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * Phi(x)."""
    return beta_gelu(x, 1.0)


def beta_gelu_derivative(x: jax.Array, beta: float = 1.0) -> jax.Array:
    """d/dx [x Phi(beta x)] = Phi(beta x) + beta x phi(beta x), in closed form."""
    phi = jnp.exp(-0.5 * (beta * x) ** 2) * _INV_SQRT_2PI
    return 0.5 * (1.0 + jax.lax.erf(beta * x * _SQRT_HALF)) + beta * x * phi


def gelu_nme_ablated(x: jax.Array) -> jax.Array:
    """GELU whose second derivative is forced to 0 (the activation's NME removed)."""
    return _beta_gelu_nme_ablated(x, 1.0)


def beta_gelu_nme_ablated(x: jax.Array, beta: float = 1.0) -> jax.Array:
    """beta-GELU in value and slope, its second derivative forced to 0."""
    return _beta_gelu_nme_ablated(x, beta)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _beta_gelu_nme_ablated(x: jax.Array, beta: float) -> jax.Array:
    return beta_gelu(x, beta)


@_beta_gelu_nme_ablated.defjvp
def _beta_gelu_nme_ablated_jvp(beta, primals, tangents):
    (x,), (t,) = primals, tangents
    # The slope is a constant to every further derivative: sigma'' = 0 at every order.
    slope = jax.lax.stop_gradient(beta_gelu_derivative(x, beta))
    return _beta_gelu_nme_ablated(x, beta), slope * t


def relu_synthetic_nme(x: jax.Array, beta: float = 1.0) -> jax.Array:
    """ReLU in value and slope, with the second derivative of beta-GELU (synthetic NME)."""
    return _relu_synthetic_nme(x, beta)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _relu_synthetic_nme(x: jax.Array, beta: float) -> jax.Array:
    return relu(x)


@_relu_synthetic_nme.defjvp
def _relu_synthetic_nme_jvp(beta, primals, tangents):
    (x,), (t,) = primals, tangents
    surrogate = beta_gelu_derivative(x, beta)
    step = (x > 0).astype(x.dtype)
    # Value step(x); derivative surrogate'' (= beta-GELU's sigma''), because the
    # stop-gradient removes the step's (zero) derivative and keeps the surrogate's.
    slope = jax.lax.stop_gradient(step - surrogate) + surrogate
    return _relu_synthetic_nme(x, beta), slope * t


def relu_spike_nme(x: jax.Array, beta: float = 1.0) -> jax.Array:
    """ReLU in value and slope, with second derivative beta phi(beta x) (smoothed spike)."""
    return _relu_spike_nme(x, beta)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _relu_spike_nme(x: jax.Array, beta: float) -> jax.Array:
    return relu(x)


@_relu_spike_nme.defjvp
def _relu_spike_nme_jvp(beta, primals, tangents):
    (x,), (t,) = primals, tangents
    smoothed_step = 0.5 * (1.0 + jax.lax.erf(beta * x * _SQRT_HALF))  # Phi(beta x)
    step = (x > 0).astype(x.dtype)
    # Value of the slope: ReLU's step; its derivative: Phi(beta x)' = beta phi(beta x).
    slope = jax.lax.stop_gradient(step - smoothed_step) + smoothed_step
    return _relu_spike_nme(x, beta), slope * t


@dataclasses.dataclass(frozen=True)
class ActivationEntry:
    """An activation by name: its factory (taking the config's keywords `params`) and the
    name of its ablated twin (same value and slope at every input, sigma'' = 0), if any."""

    factory: Callable[..., Activation]
    params: tuple[str, ...] = ()
    twin: str | None = None


ACTIVATIONS: Registry[ActivationEntry] = Registry("activation", "config.model.activation")


def register_activation(
    name: str, factory: Callable[..., Activation], params: tuple[str, ...] = (),
    ablated_twin: str | None = None, replace: bool = False,
) -> None:
    """Adds an activation factory under `name`, with the name of its ablated twin (same
    value and slope, sigma'' = 0) if it has one (the NME split by source needs it). Its
    inputs must go through `models.layers.activate` in a model, or the sparsity and
    dead-unit probes do not see them."""
    ACTIVATIONS.register(name, ActivationEntry(factory, tuple(params), ablated_twin),
                         replace=replace)


# Each activation's ablated twin: the same value and slope at every input, its second
# derivative zero. A network with the twin in place of the activation has, at the same
# weights, the same outputs, residuals, Jacobian and G, and the NME without the
# activations' part (docs/curvature.md, "The Hessian decomposition"): the NME split by
# source uses it.
register_activation("relu", lambda: relu,  # sigma'' = 0 already (a delta at 0, which
                    ablated_twin="relu")    # autodiff does not see)
register_activation("gelu", lambda: gelu, ablated_twin="gelu_nme_ablated")
register_activation("beta_gelu", lambda beta: functools.partial(beta_gelu, beta=beta),
                    ("beta",), ablated_twin="beta_gelu_nme_ablated")
register_activation("gelu_nme_ablated", lambda: gelu_nme_ablated,
                    ablated_twin="gelu_nme_ablated")
register_activation("beta_gelu_nme_ablated",
                    lambda beta: functools.partial(beta_gelu_nme_ablated, beta=beta),
                    ("beta",), ablated_twin="beta_gelu_nme_ablated")
register_activation("relu_synthetic_nme",  # ReLU's value and slope; its surrogate removed
                    lambda beta: functools.partial(relu_synthetic_nme, beta=beta), ("beta",),
                    ablated_twin="relu")
register_activation("relu_spike_nme", lambda beta: functools.partial(relu_spike_nme, beta=beta),
                    ("beta",), ablated_twin="relu")


def ablated_twin(name: str) -> str | None:
    """The registered ablated twin of activation `name`, or None."""
    return ACTIVATIONS[name].twin if name in ACTIVATIONS else None


def activation_names() -> list[str]:
    """Names accepted by `config.model.activation`."""
    return sorted(ACTIVATIONS)


def activation_params(name: str) -> tuple[str, ...]:
    """Keyword arguments that activation `name` takes (e.g. ('beta',))."""
    return ACTIVATIONS[name].params


def get_activation(name: str, **kwargs: float) -> Activation:
    """Returns the activation called `name`, built with the keywords it accepts.

    Keywords it does not take are ignored, so one config can carry `beta` for
    every activation and only `beta_gelu` reads it.
    """
    entry = ACTIVATIONS[name]
    return entry.factory(**{k: kwargs[k] for k in entry.params if k in kwargs})
