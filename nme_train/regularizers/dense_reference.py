"""Dense float64 references for the trace penalties, on a tiny MLP.

Tr H = tr(∇²L) and Tr G = tr(J^T H_z J) as functions of the flat
parameters, built from dense matrices (jax.hessian, jax.jacfwd), so that
jax.grad of them is the exact ∇Tr H and ∇Tr G an estimator's expected
update is compared with (tests/test_regularizers.py, the
tools/gn_estimator_bias.py). `problem(seed)` is the 12-example, 3-class
tanh MLP both use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from nme_train.curvature.losses import softmax_cross_entropy
from nme_train.regularizers.objective import Transform, objective

N, D, H, C = 12, 4, 5, 3


cross_entropy = softmax_cross_entropy()  # mean over the batch, integer labels


def dense_traces(outputs: Callable, targets: jax.Array) -> dict[str, Callable]:
    """Tr H, Tr G and `fixed_p` as functions of flat parameters, from dense matrices.

    `outputs(flat) -> [N, C]` logits, softmax cross-entropy against `targets`.
    fixed_p(theta) = (1/N) sum_i sum_y sg(p_iy) ||J_i^T (p_i - e_y)||^2 equals
    Tr G in value; its gradient is the exact expected update of the
    sampled-label estimator (labels drawn from p, then held fixed).
    """

    def loss(f):
        return cross_entropy(outputs(f), targets)

    def trace_h(f):
        return jnp.trace(jax.hessian(loss)(f))

    def trace_g(f):
        z = outputs(f)
        jac = jax.jacfwd(lambda q: outputs(q).reshape(-1))(f)
        hz = jax.hessian(lambda u: cross_entropy(u.reshape(z.shape), targets))(z.reshape(-1))
        return jnp.trace(hz @ jac @ jac.T)

    def fixed_p(f):
        p = jax.nn.softmax(outputs(f))
        jac = jax.jacfwd(outputs)(f)  # [N, C, P]
        total = 0.0
        for y in range(p.shape[-1]):
            a = jnp.einsum("ncp,nc->np", jac, p - jax.nn.one_hot(y, p.shape[-1]))
            total += jnp.sum(jax.lax.stop_gradient(p[:, y]) * jnp.sum(a**2, axis=-1))
        return total / p.shape[0]

    return {"loss": loss, "trace_h": trace_h, "trace_g": trace_g, "fixed_p": fixed_p}


def mlp(params, x, activation=jnp.tanh):
    return activation(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def mlp_references(params, batch, activation=jnp.tanh) -> tuple[jax.Array, dict[str, Callable]]:
    """The flat parameters of `mlp` and its `dense_traces` on `batch`."""
    flat, unravel = ravel_pytree(params)
    return flat, dense_traces(lambda f: mlp(unravel(f), batch["inputs"], activation),
                              batch["targets"])


def problem(seed: int):
    """The tests' tiny MLP problem (seed 0 is the fixture of tests/test_regularizers.py)."""
    rng = np.random.default_rng(seed)
    params = {"w1": rng.normal(size=(D, H)), "b1": rng.normal(size=H) * 0.1,
              "w2": rng.normal(size=(H, C)), "b2": rng.normal(size=C) * 0.1}
    params = jax.tree.map(jnp.asarray, params)
    batch = {"inputs": jnp.asarray(rng.normal(size=(N, D))),
             "targets": jnp.asarray(rng.integers(0, C, N))}
    return params, batch


def penalty_gradients(penalty: Transform, params, batch, draws: int,
                      activation=jnp.tanh, seed: int = 11) -> np.ndarray:
    """[draws, P]: the gradient of the penalty term alone (coef 1), one row per key."""
    model = functools.partial(mlp, activation=activation)
    obj = penalty(objective(model, cross_entropy))
    plain = objective(model, cross_entropy)

    def one(key):
        total = jax.grad(lambda p: obj(p, batch, key)[0])(params)
        loss = jax.grad(lambda p: plain(p, batch, key)[0])(params)
        return ravel_pytree(jax.tree.map(jnp.subtract, total, loss))[0]

    keys = jax.random.split(jax.random.PRNGKey(seed), draws)
    return np.asarray(jax.jit(jax.vmap(one))(keys))


def compare(samples: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    mean = samples.mean(axis=0)
    norm = float(np.linalg.norm(reference))
    out = {"rel_distance": float(np.linalg.norm(mean - reference)) / norm,
           "cosine": float(mean @ reference / (np.linalg.norm(mean) * norm))}
    if len(samples) > 1:
        out["rel_std_per_draw"] = float(np.sqrt(samples.var(axis=0, ddof=1).sum())) / norm
    return out
