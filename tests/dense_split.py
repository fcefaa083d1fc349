"""Dense float64 references for the NME split by source, on tiny networks written out.

`split_model(kind, batch_norm)` is a tiny MLP (two activations) or CNN (one), with
BatchNorm on the batch's statistics if asked; its apply returns the logits and every
activation's pre-activation, and takes a perturbation added to each activation's output
(to read the residual's backpropagated signal at every unit). `dense_split` builds, from
dense matrices only: the gradient g, H (jax.hessian of the loss), G = J^T H_z J, the NME
(jax.hessian of r . z with the residual r held fixed), NME_act from its sigma'' terms,

    NME_act = sum_u g_u sigma''(a_u) grad a_u grad a_u^T

(g_u the residual's signal at unit u, a_u its pre-activation; NOTES.md, "The Hessian
decomposition"), and NME_rest = NME - NME_act. No ablated twin enters these references.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

D, C = 4, 3  # input features, classes


def split_model(kind: str, batch_norm: bool):
    """(apply(params, x, act, delta=None) -> (logits, pre-activations), params, batch)."""
    def norm(p, name, a, axes):
        if not batch_norm:
            return a
        mean = jnp.mean(a, axis=axes, keepdims=True)
        var = jnp.mean((a - mean) ** 2, axis=axes, keepdims=True)
        return (a - mean) / jnp.sqrt(var + 1e-5) * p[f"{name}_scale"] + p[f"{name}_offset"]

    def apply(params, x, act, delta=None):
        pre = []

        def unit(a, i):
            pre.append(a)
            h = act(a)
            return h if delta is None else h + delta[i]

        if kind == "mlp":
            h = unit(norm(params, "n1", x @ params["w1"] + params["b1"], (0,)), 0)
            h = unit(norm(params, "n2", h @ params["w2"] + params["b2"], (0,)), 1)
            z = h @ params["w3"] + params["b3"]
        else:
            y = jax.lax.conv_general_dilated(x, params["k"], (1, 1), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = unit(norm(params, "n1", y + params["c"], (0, 1, 2)), 0)
            z = jnp.mean(h, axis=(1, 2)) @ params["w"] + params["b"]
        return z, pre

    rng = np.random.default_rng(7)
    if kind == "mlp":
        params = {"w1": rng.normal(size=(D, 4)), "b1": rng.normal(size=4) * 0.3,
                  "w2": rng.normal(size=(4, 4)) * 0.7, "b2": rng.normal(size=4) * 0.3,
                  "w3": rng.normal(size=(4, C)), "b3": rng.normal(size=C) * 0.1}
        widths = {"n1": 4, "n2": 4}
        x = rng.normal(size=(6, D))
    else:
        params = {"k": rng.normal(size=(3, 3, 1, 2)), "c": rng.normal(size=2) * 0.3,
                  "w": rng.normal(size=(2, C)), "b": rng.normal(size=C) * 0.1}
        widths = {"n1": 2}
        x = rng.normal(size=(6, 5, 5, 1))
    if batch_norm:
        for name, width in widths.items():
            params[f"{name}_scale"] = 1.0 + 0.2 * rng.normal(size=width)
            params[f"{name}_offset"] = 0.2 * rng.normal(size=width)
    batch = {"inputs": jnp.asarray(x), "targets": jnp.asarray(rng.integers(0, C, 6))}
    return apply, jax.tree.map(jnp.asarray, params), batch


def dense_split(apply, params, batch, act, loss) -> dict[str, np.ndarray]:
    """g, H, G, NME, NME_act (from the sigma'' terms) and NME_rest as dense arrays.

    `loss(logits, targets)` is a mean over the batch with `.residual(z, targets)` (the
    project's OutputLoss); H_z comes from jax.hessian of it, not from its closed form.
    """
    flat, unravel = ravel_pytree(params)
    x, targets = batch["inputs"], batch["targets"]

    def logits(f):
        return apply(unravel(f), x, act)[0]

    z, pre = apply(params, x, act)
    r = loss.residual(z, targets)  # dL/dz of the batch mean, held fixed
    grad = np.asarray(jax.grad(lambda f: loss(logits(f), targets))(flat))
    hessian = np.asarray(jax.hessian(lambda f: loss(logits(f), targets))(flat))
    jac = jax.jacfwd(lambda f: logits(f).reshape(-1))(flat)
    hz = jax.hessian(lambda u: loss(u.reshape(z.shape), targets))(z.reshape(-1))
    gauss_newton = np.asarray(jac.T @ hz @ jac)
    nme = np.asarray(jax.hessian(lambda f: jnp.sum(r * logits(f)))(flat))
    zeros = [jnp.zeros_like(a) for a in pre]
    signal = jax.grad(lambda d: jnp.sum(r * apply(params, x, act, d)[0]))(zeros)
    second = jax.vmap(jax.grad(jax.grad(act)))
    nme_act = 0.0
    for i, a in enumerate(pre):
        J = jax.jacfwd(lambda f, i=i: apply(unravel(f), x, act)[1][i].reshape(-1))(flat)
        weight = (signal[i] * second(a.reshape(-1)).reshape(a.shape)).reshape(-1)
        nme_act = nme_act + np.asarray(J.T @ (weight[:, None] * J))
    return {"flat": np.asarray(flat), "grad": grad, "hessian": hessian,
            "gauss_newton": gauss_newton, "nme": nme, "nme_activation": nme_act,
            "nme_rest": nme - nme_act}
