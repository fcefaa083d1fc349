"""Dense float64 references for the NME split by source, on tiny networks written out.

`split_model(kind, batch_norm)` is a tiny MLP (two activations) or CNN (one), with
BatchNorm on the batch's statistics if asked; its apply returns the logits and every
activation's pre-activation, and takes a perturbation added to each activation's output
(to read the residual's backpropagated signal at every unit). `dense_split` builds, from
dense matrices only: the gradient g, H (jax.hessian of the loss), G = J^T H_z J, the NME
(jax.hessian of r . z with the residual r held fixed), NME_act from its sigma'' terms,

    NME_act = sum_u g_u sigma''(a_u) grad a_u grad a_u^T

(g_u the residual's signal at unit u, a_u its pre-activation; docs/curvature.md, "The Hessian
decomposition"), and NME_rest = NME - NME_act. No ablated twin enters these references.
`gelu_split(kind, batch_norm)` is dense_split of GELU with the softmax cross-entropy,
computed once per process (the tests that use it share an xdist_group, so one worker
builds each).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

D, C = 4, 3  # input features, classes


EPS = 1e-5


def normalize(a, axes):
    """BatchNorm's normalization with the batch's statistics (the reference's own code)."""
    mean = jnp.mean(a, axis=axes, keepdims=True)
    var = jnp.mean((a - mean) ** 2, axis=axes, keepdims=True)
    return (a - mean) / jnp.sqrt(var + EPS)


def split_model(kind: str, batch_norm: bool):
    """(apply(params, x, act, ...) -> (logits, pre-activations, BatchNorm inputs), params,
    batch). apply's `delta` is added to each activation's output and `norm_delta` to each
    BatchNorm's output (to read the residual's signal there); `normalization` replaces the
    normalization (the twin's, in the tests)."""
    def apply(params, x, act, delta=None, norm_delta=None, normalization=normalize):
        pre, norm_inputs = [], []

        def norm(p, name, a, axes):
            if not batch_norm:
                return a
            i = len(norm_inputs)
            norm_inputs.append(a)
            y = normalization(a, axes) * p[f"{name}_scale"] + p[f"{name}_offset"]
            return y if norm_delta is None else y + norm_delta[i]

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
        return z, pre, norm_inputs

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
    """g, H, G, NME, NME_act (from the sigma'' terms), NME_rest = NME - NME_act, NME_norm
    (from the second derivatives of BatchNorm's normalization in its input) and
    NME_between = NME_rest - NME_norm, as dense arrays.

    NME_norm = sum over BatchNorm layers, features f, examples i of
    d_if gamma_f sum_jk (d^2 xhat_if / d a_jf d a_kf) grad a_jf grad a_kf^T, with a the
    layer's input, xhat its normalization over the batch, d the residual's signal at the
    layer's output. `loss(logits, targets)` is a mean over the batch with
    `.residual(z, targets)` (the project's OutputLoss); H_z comes from jax.hessian of it.
    """
    flat, unravel = ravel_pytree(params)
    x, targets = batch["inputs"], batch["targets"]

    def logits(f):
        return apply(unravel(f), x, act)[0]

    # each derivative is one compiled program (jit changes nothing in the float64 math:
    # op by op, JAX compiled a program for every operation and shape, 834 in all)
    jit = jax.jit
    z, pre, norm_inputs = apply(params, x, act)
    r = loss.residual(z, targets)  # dL/dz of the batch mean, held fixed
    grad = np.asarray(jit(jax.grad(lambda f: loss(logits(f), targets)))(flat))
    hessian = np.asarray(jit(jax.hessian(lambda f: loss(logits(f), targets)))(flat))
    jac = jit(jax.jacfwd(lambda f: logits(f).reshape(-1)))(flat)
    hz = jit(jax.hessian(lambda u: loss(u.reshape(z.shape), targets)))(z.reshape(-1))
    gauss_newton = np.asarray(jac.T @ hz @ jac)
    nme = np.asarray(jit(jax.hessian(lambda f: jnp.sum(r * logits(f))))(flat))
    zeros = [jnp.zeros_like(a) for a in pre]
    signal = jit(jax.grad(lambda d: jnp.sum(r * apply(params, x, act, d)[0])))(zeros)
    second = jit(jax.vmap(jax.grad(jax.grad(act))))
    nme_act = 0.0
    for i, a in enumerate(pre):
        J = jit(jax.jacfwd(lambda f, i=i: apply(unravel(f), x, act)[1][i].reshape(-1)))(flat)
        weight = (signal[i] * second(a.reshape(-1)).reshape(a.shape)).reshape(-1)
        nme_act = nme_act + np.asarray(J.T @ (weight[:, None] * J))
    nme_norm = np.zeros_like(nme)
    if norm_inputs:
        zeros = [jnp.zeros_like(a) for a in norm_inputs]
        norm_signal = jit(jax.grad(
            lambda d: jnp.sum(r * apply(params, x, act, None, d)[0])))(zeros)
        names = sorted({k.split("_")[0] for k in params if k.endswith("_scale")})
        normalization_hessian = jit(jax.hessian(lambda c: normalize(c, (0,))))
        for i, (a, name) in enumerate(zip(norm_inputs, names)):
            features = a.shape[-1]
            A = jit(jax.jacfwd(lambda f, i=i: apply(unravel(f), x, act)[2][i]))(flat)  # a x P
            for f in range(features):
                column = a[..., f].reshape(-1)  # one feature over the batch (and space)
                second = normalization_hessian(column)  # [m, m, m]
                weight = (norm_signal[i][..., f].reshape(-1) * params[f"{name}_scale"][f])
                grad_a = A[..., f, :].reshape(column.size, -1)  # m x P
                curvature = jnp.einsum("i,ijk->jk", weight, second)
                nme_norm = nme_norm + np.asarray(grad_a.T @ curvature @ grad_a)
    return {"flat": np.asarray(flat), "grad": grad, "hessian": hessian,
            "gauss_newton": gauss_newton, "nme": nme, "nme_activation": nme_act,
            "nme_rest": nme - nme_act, "nme_normalization": nme_norm,
            "nme_between": nme - nme_act - nme_norm}


@functools.cache
def _gelu_split(kind: str, batch_norm: bool) -> dict[str, np.ndarray]:
    from nme_train.curvature import softmax_cross_entropy
    from nme_train.models.activations import gelu

    apply, params, batch = split_model(kind, batch_norm)
    return dense_split(apply, params, batch, gelu, softmax_cross_entropy())


def gelu_split(kind: str, batch_norm: bool) -> dict[str, np.ndarray]:
    """dense_split(*split_model(kind, batch_norm), gelu, softmax_cross_entropy()), a copy of
    the process's one computation of it."""
    return {k: v.copy() for k, v in _gelu_split(kind, batch_norm).items()}
