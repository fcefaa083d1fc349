"""Activation functions chosen by name from the config.

Every activation here is a plain `jnp` function (or a `jax.custom_jvp` rule in
later additions), so it stays differentiable to any order: the regularizers
differentiate through the model two or three times.

The activation family of the paper (see NOTES.md, section 2):
  relu       max(x, 0)
  gelu       x * Phi(x), exact erf form (not the tanh approximation)
  beta_gelu  x * Phi(beta * x): beta = 1 is GELU, beta -> inf tends to ReLU
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]

_SQRT_HALF = 0.7071067811865476


def relu(x: jax.Array) -> jax.Array:
    """Rectified linear unit, max(x, 0)."""
    return jnp.maximum(x, 0)


def beta_gelu(x: jax.Array, beta: float = 1.0) -> jax.Array:
    """x * Phi(beta x) with Phi the standard normal CDF (exact erf form)."""
    return x * 0.5 * (1.0 + jax.lax.erf(beta * x * _SQRT_HALF))


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * Phi(x)."""
    return beta_gelu(x, 1.0)


# name -> (factory taking the config's keyword arguments, the keywords it accepts)
_REGISTRY: dict[str, tuple[Callable[..., Activation], tuple[str, ...]]] = {
    "relu": (lambda: relu, ()),
    "gelu": (lambda: gelu, ()),
    "beta_gelu": (lambda beta: functools.partial(beta_gelu, beta=beta), ("beta",)),
}


def register_activation(
    name: str, factory: Callable[..., Activation], params: tuple[str, ...] = ()
) -> None:
    """Adds an activation factory under `name` (used by the NME interventions)."""
    _REGISTRY[name] = (factory, params)


def activation_names() -> list[str]:
    """Names accepted by `config.model.activation`."""
    return sorted(_REGISTRY)


def activation_params(name: str) -> tuple[str, ...]:
    """Keyword arguments that activation `name` takes (e.g. ('beta',))."""
    return _REGISTRY[name][1]


def get_activation(name: str, **kwargs: float) -> Activation:
    """Returns the activation called `name`, built with the keywords it accepts.

    Keywords it does not take are ignored, so one config can carry `beta` for
    every activation and only `beta_gelu` reads it.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {activation_names()}"
        )
    factory, params = _REGISTRY[name]
    return factory(**{k: kwargs[k] for k in params if k in kwargs})
