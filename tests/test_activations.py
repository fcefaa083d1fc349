"""Activations and their second derivatives against closed forms, at several orders."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nme_train.models import activation_names, get_activation
from nme_train.models.activations import (
    beta_gelu,
    beta_gelu_derivative,
    gelu,
    gelu_nme_ablated,
    relu,
    relu_spike_nme,
    relu_synthetic_nme,
)

X = jnp.array([-3.0, -1.3, -0.4, -0.05, 0.07, 0.5, 1.1, 2.9])  # avoids ReLU's kink at 0


def derivative(f, order):
    for _ in range(order):
        f = jax.grad(f)
    return jax.vmap(f)


def phi(x):
    return jnp.exp(-0.5 * x**2) / jnp.sqrt(2 * jnp.pi)


def beta_gelu_second(x, beta):
    """Closed form: beta phi(beta x) (2 - beta^2 x^2)."""
    return beta * phi(beta * x) * (2 - beta**2 * x**2)


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
def test_beta_gelu_derivatives(beta):
    f = functools.partial(beta_gelu, beta=beta)
    np.testing.assert_allclose(derivative(f, 1)(X), beta_gelu_derivative(X, beta), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(derivative(f, 2)(X), beta_gelu_second(X, beta), rtol=1e-4,
                               atol=1e-5)


def test_relu_and_gelu_second_derivatives():
    np.testing.assert_array_equal(derivative(relu, 2)(X), 0.0)
    np.testing.assert_allclose(derivative(gelu, 2)(X), phi(X) * (2 - X**2), rtol=1e-4, atol=1e-5)


def test_gelu_nme_ablated_keeps_value_and_slope_and_zeroes_curvature():
    np.testing.assert_allclose(jax.vmap(gelu_nme_ablated)(X), gelu(X), rtol=1e-6)
    np.testing.assert_allclose(derivative(gelu_nme_ablated, 1)(X), derivative(gelu, 1)(X),
                               rtol=1e-6)
    np.testing.assert_array_equal(derivative(gelu_nme_ablated, 2)(X), 0.0)
    np.testing.assert_array_equal(derivative(gelu_nme_ablated, 3)(X), 0.0)
    # forward-over-reverse (what an HVP does) sees no curvature either
    hvp = jax.jvp(jax.grad(lambda x: jnp.sum(gelu_nme_ablated(x))), (X,), (jnp.ones_like(X),))[1]
    np.testing.assert_array_equal(hvp, 0.0)


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_relu_synthetic_nme_has_relu_slope_and_surrogate_curvature(beta):
    f = functools.partial(relu_synthetic_nme, beta=beta)
    np.testing.assert_array_equal(jax.vmap(f)(X), relu(X))
    np.testing.assert_array_equal(derivative(f, 1)(X), (X > 0).astype(X.dtype))
    np.testing.assert_allclose(derivative(f, 2)(X), beta_gelu_second(X, beta), rtol=1e-4,
                               atol=1e-5)
    surrogate = functools.partial(beta_gelu, beta=beta)
    np.testing.assert_allclose(derivative(f, 3)(X), derivative(surrogate, 3)(X), rtol=1e-3,
                               atol=1e-4)
    hvp = jax.jvp(jax.grad(lambda x: jnp.sum(f(x))), (X,), (jnp.ones_like(X),))[1]
    np.testing.assert_allclose(hvp, beta_gelu_second(X, beta), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_relu_spike_nme_has_relu_slope_and_the_smoothed_relus_curvature(beta):
    """sigma'' = that of E[relu(x + z / beta)], z ~ N(0, 1), whose closed form
    x Phi(beta x) + phi(beta x) / beta is differenced here in float64 (not its formula)."""
    f = functools.partial(relu_spike_nme, beta=beta)
    np.testing.assert_array_equal(jax.vmap(f)(X), relu(X))
    np.testing.assert_array_equal(derivative(f, 1)(X), (X > 0).astype(X.dtype))
    x64, h = np.asarray(X, np.float64), 1e-4

    def smoothed(x):
        cdf = 0.5 * (1 + np.vectorize(math.erf)(beta * x / np.sqrt(2)))
        pdf = np.exp(-0.5 * (beta * x) ** 2) / np.sqrt(2 * np.pi)
        return x * cdf + pdf / beta

    finite = (smoothed(x64 + h) - 2 * smoothed(x64) + smoothed(x64 - h)) / h**2
    second = derivative(f, 2)(X)
    assert np.all(second >= 0)
    np.testing.assert_allclose(second, finite, rtol=1e-4, atol=1e-5)
    hvp = jax.jvp(jax.grad(lambda x: jnp.sum(f(x))), (X,), (jnp.ones_like(X),))[1]
    np.testing.assert_allclose(hvp, second, rtol=1e-6)


def test_every_activation_is_registered_by_name():
    assert {"relu", "gelu", "beta_gelu", "gelu_nme_ablated",
            "relu_synthetic_nme"} <= set(activation_names())
    y = get_activation("relu_synthetic_nme", beta=2.0)(X)
    np.testing.assert_array_equal(y, relu(X))


@pytest.mark.parametrize("name", ["relu", "gelu", "beta_gelu", "relu_synthetic_nme",
                                  "relu_spike_nme", "gelu_nme_ablated", "beta_gelu_nme_ablated"])
def test_ablated_twins_keep_value_and_slope_and_have_no_second_derivative(name):
    """The twin the probes split the NME with: at every input the activation's value and
    slope (for relu_synthetic_nme: ReLU's, its surrogate sigma'' removed), sigma'' = 0."""
    from nme_train.models.activations import ablated_twin

    f, twin = (get_activation(n, beta=4.0) for n in (name, ablated_twin(name)))
    np.testing.assert_allclose(jax.vmap(twin)(X), jax.vmap(f)(X), rtol=1e-6)
    np.testing.assert_allclose(derivative(twin, 1)(X), derivative(f, 1)(X), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_array_equal(derivative(twin, 2)(X), 0.0)
    if name in ("gelu", "beta_gelu"):  # the part the twin removes is there to remove
        assert np.abs(derivative(f, 2)(X)).max() > 0.1


def test_an_activation_without_a_twin_says_so():
    from nme_train.models.activations import ablated_twin, register_activation

    register_activation("tanh_for_test", lambda: jnp.tanh)
    assert ablated_twin("tanh_for_test") is None
