"""Matrix-free products with the Hessian H, its Gauss-Newton part G and the NME.

With outputs z = f(theta) and a loss l(z) (see "The Hessian decomposition"
in the project's notes on the paper):

    H = J^T H_z J + sum_c (dl/dz_c) d^2 z_c / d theta^2 = G + NME

`hvp` is forward-over-reverse (jvp of the gradient): one forward and one
backward pass carrying tangents, about 2x a gradient, where double
backprop costs much more. `gvp` never differentiates f twice: a jvp of f,
the output-space Hessian of l (small), and a vjp of f. `nme_vp` computes
the NME product directly, as the jvp of theta -> J(theta)^T r with the
residual r = dl/dz held fixed, so it does not suffer the cancellation of
H v - G v.

Every function here takes and returns pytrees shaped like the parameters;
none gathers or reshapes them, so sharded parameters stay sharded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Params = Any


# -- products ----------------------------------------------------------------
def hvp(f: Callable[[Params], jax.Array], params: Params, v: Params) -> Params:
    """H v for the scalar function f at params (forward-over-reverse)."""
    return jax.jvp(jax.grad(f), (params,), (v,))[1]


def output_hvp(loss_of_outputs: Callable[[Any], jax.Array], outputs: Any, u: Any) -> Any:
    """H_z u: the Hessian of the loss with respect to the outputs, applied to u."""
    return jax.jvp(jax.grad(loss_of_outputs), (outputs,), (u,))[1]


def gvp(model_fn: Callable[[Params], Any], loss_of_outputs: Callable[[Any], jax.Array],
        params: Params, v: Params) -> Params:
    """G v = J^T H_z J v for outputs model_fn(params) and loss loss_of_outputs(outputs)."""
    outputs, jv = jax.jvp(model_fn, (params,), (v,))
    _, vjp = jax.vjp(model_fn, params)
    return vjp(output_hvp(loss_of_outputs, outputs, jv))[0]


def nme_vp(model_fn: Callable[[Params], Any], loss_of_outputs: Callable[[Any], jax.Array],
           params: Params, v: Params) -> Params:
    """NME v = sum_c r_c (d^2 z_c / d theta^2) v with r = dl/dz fixed, computed directly."""
    outputs = model_fn(params)
    residual = jax.lax.stop_gradient(jax.grad(loss_of_outputs)(outputs))

    def jt_r(p):
        return jax.vjp(model_fn, p)[1](residual)[0]

    return jax.jvp(jt_r, (params,), (v,))[1]
