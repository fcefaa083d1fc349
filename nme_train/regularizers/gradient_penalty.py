"""Gradient penalty ("penalty SAM"): L + rho ||grad L|| or L + (rho / 2) ||grad L||^2.

Its gradient is grad L + rho ||g||^(power - 2) H g: a Hessian-vector
product, so the update depends on the NME. `nme=False` replaces H g by G g
(the update with the NME removed; the reported value is unchanged).

Two exact ways to get that gradient:
  mode="hvp"             a custom VJP: one value-and-gradient pass for g,
                         then one forward-over-reverse product H g (or the
                         jvp / output-Hessian / vjp product G g) in the
                         backward pass. About 3 gradients.
  mode="double_backprop" jax.grad through a function that calls jax.grad
                         (reverse over reverse). Measured 13x a gradient on
                         a CPU ResNet-18 (see the README's benchmarks).
The hvp form is the default. Its objective supports first-order
differentiation only (jax.grad, as the trainer uses); put it outermost in a
chain under transforms that differentiate twice (trace penalties).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from nme_train.curvature.products import gvp, hvp, tree_norm
from nme_train.regularizers.objective import (
    Objective,
    Transform,
    add_metrics,
    loss_at,
)

MODES = ("hvp", "double_backprop")


def _scaled_norm(norm: jax.Array, power: int) -> jax.Array:
    """||g||^power / power: the penalty's shape (its gradient is ||g||^(power-2) H g)."""
    return norm if power == 1 else 0.5 * norm**2


def loss_and_gradient_norm(
    value: Callable, params, power: int, matvec: Callable
) -> tuple[jax.Array, jax.Array, dict, jax.Array]:
    """(L, ||g||^power / power, aux, ||g||) whose VJP uses `matvec(params, v)` for H v.

    `value(params) -> (L, aux)`. The backward pass returns
    ct_L * g + ct_pen * ||g||^(power - 2) * matvec(params, g).
    """

    @jax.custom_vjp
    def fn(p):
        (loss, aux), g = jax.value_and_grad(value, has_aux=True)(p)
        norm = tree_norm(g)
        return loss, _scaled_norm(norm, power), aux, norm

    def fwd(p):
        (loss, aux), g = jax.value_and_grad(value, has_aux=True)(p)
        norm = tree_norm(g)
        return (loss, _scaled_norm(norm, power), aux, norm), (p, g, norm)

    def bwd(residuals, cotangents):
        p, g, norm = residuals
        ct_loss, ct_pen = cotangents[0], cotangents[1]
        weight = 1.0 / jnp.maximum(norm, 1e-12) if power == 1 else 1.0
        mg = matvec(p, jax.tree.map(lambda x: x * weight, g))
        return (jax.tree.map(lambda a, b: ct_loss * a + ct_pen * b, g, mg),)

    fn.defvjp(fwd, bwd)
    return fn(params)


def gradient_penalty(rho: float, power: int = 1, nme: bool = True,
                     mode: str = "hvp") -> Transform:
    """L + rho ||grad L|| (power 1, the paper's) or L + (rho/2) ||grad L||^2 (power 2)."""
    if rho < 0:
        raise ValueError(f"gradient_penalty: rho={rho} must be >= 0")
    if power not in (1, 2):
        raise ValueError(f"gradient_penalty: power={power} must be 1 or 2")
    if mode not in MODES:
        raise ValueError(f"gradient_penalty: mode={mode!r} must be one of {MODES}")
    if mode == "double_backprop" and not nme:
        raise ValueError("gradient_penalty: nme=False needs mode='hvp' (G g is not the "
                         "gradient of a scalar that double backprop could differentiate)")

    def transform(obj: Objective) -> Objective:
        def value(params, batch, rng):
            if mode == "double_backprop":
                (loss, aux), g = jax.value_and_grad(obj.value, has_aux=True)(params, batch, rng)
                norm = tree_norm(g)
                penalty = _scaled_norm(norm, power)
            else:
                if nme:
                    def matvec(p, v):
                        return hvp(loss_at(obj, batch, rng), p, v)
                else:
                    def matvec(p, v):
                        return gvp(lambda q: obj.outputs(q, batch["inputs"]),
                                   lambda z: obj.loss_fn(z, batch["targets"]), p, v)
                loss, penalty, aux, norm = loss_and_gradient_norm(
                    lambda p: obj(p, batch, rng), params, power, matvec)
            total = loss + rho * penalty
            return total, add_metrics(aux, **{
                "gradient_penalty/grad_norm": jax.lax.stop_gradient(norm),
                "gradient_penalty/penalty": jax.lax.stop_gradient(rho * penalty)})

        return obj.with_value(value)

    return transform
