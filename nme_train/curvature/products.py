"""Matrix-free products with the Hessian H and its Gauss-Newton part G.

With outputs z = f(theta) and a loss l(z) (see "The Hessian decomposition"
in the project's notes on the paper):

    H = J^T H_z J + sum_c (dl/dz_c) d^2 z_c / d theta^2 = G + NME

`hvp` is forward-over-reverse (jvp of the gradient): one forward and one
backward pass carrying tangents, about 2x a gradient, where double
backprop costs much more. `gvp` never differentiates f twice: a jvp of f,
the output-space Hessian of l (small), and a vjp of f.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Params = Any


def tree_dot(a: Any, b: Any) -> jax.Array:
    """Sum over leaves of <a_leaf, b_leaf>, accumulated in float32 or wider."""
    leaves = [jnp.vdot(x, y).real for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return sum(leaves[1:], leaves[0]) if leaves else jnp.zeros(())


def tree_norm(a: Any) -> jax.Array:
    """Euclidean norm of a pytree seen as one vector."""
    return jnp.sqrt(tree_dot(a, a))


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
