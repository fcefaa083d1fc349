"""Gradient penalty ("penalty SAM"): L + rho ||grad L|| or L + (rho / 2) ||grad L||^2.

Its gradient is grad L + rho ||g||^(power - 2) H g: a Hessian-vector
product, so the update depends on the NME. `nme=False` replaces H g by G g
(the update with the NME removed; the reported value is unchanged).

Two exact ways to get that gradient:
  mode="hvp"             a custom VJP: the gradient map is linearised once
                         (jax.linearize gives g and keeps the tangent
                         map), and the backward pass applies the tangent
                         map to g: H g without a second forward and
                         backward pass. With nme=False the backward pass
                         computes G g = J^T H_z J g instead (jvp, output
                         Hessian, vjp).
  mode="double_backprop" jax.grad through a function that calls jax.grad
                         (reverse over reverse). Measured 13x a gradient on
                         a CPU ResNet-18 (docs/benchmarks.md).
The hvp form is the default. Its objective supports first-order
differentiation only (jax.grad, as the trainer uses); put it outermost in a
chain under transforms that differentiate twice (trace penalties).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from nme_train.curvature.products import gvp
from nme_train.regularizers.objective import Objective, Transform, add_metrics

MODES = ("hvp", "double_backprop")


def _scaled_norm(norm: jax.Array, power: int) -> jax.Array:
    """||g||^power / power: the penalty's shape (its gradient is ||g||^(power-2) H g)."""
    return norm if power == 1 else 0.5 * norm**2


def loss_and_gradient_norm(
    value: Callable, params, power: int, matvec: Callable | None = None
) -> tuple[jax.Array, jax.Array, dict, jax.Array]:
    """(L, ||g||^power / power, aux, ||g||) with a VJP that costs one extra H v (or G v).

    `value(params) -> (L, aux)`. The backward pass returns
    ct_L * g + ct_pen * ||g||^(power - 2) * M g, where M g is the Hessian
    product when `matvec` is None and `matvec(params, g)` otherwise (G g).
    For the Hessian, the forward pass linearises the gradient map
    (`jax.linearize`): g comes out of it, and the backward pass applies only
    its linear part, instead of redoing a forward and a backward pass.
    """
    grad_fn = jax.value_and_grad(value, has_aux=True)

    def gradient(p):
        (loss, aux), g = grad_fn(p)
        return g, (loss, aux)

    @jax.custom_vjp
    def fn(p):
        g, (loss, aux) = gradient(p)
        norm = otu.tree_norm(g)
        return loss, _scaled_norm(norm, power), aux, norm

    def fwd(p):
        if matvec is None:
            g, linear, (loss, aux) = jax.linearize(gradient, p, has_aux=True)
        else:
            (g, (loss, aux)), linear = gradient(p), None
        norm = otu.tree_norm(g)
        return (loss, _scaled_norm(norm, power), aux, norm), (p, g, norm, linear)

    def bwd(residuals, cotangents):
        p, g, norm, linear = residuals
        ct_loss, ct_pen = cotangents[0], cotangents[1]
        weight = 1.0 / jnp.maximum(norm, 1e-12) if power == 1 else 1.0
        v = jax.tree.map(lambda x: x * weight, g)
        mg = linear(v) if matvec is None else matvec(p, v)
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
                norm = otu.tree_norm(g)
                penalty = _scaled_norm(norm, power)
            else:
                matvec = None  # the Hessian, from the linearised gradient
                if not nme:
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
