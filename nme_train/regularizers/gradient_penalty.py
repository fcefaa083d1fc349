"""Gradient penalty ("penalty SAM"): L + rho ||grad L|| or L + (rho / 2) ||grad L||^2.

Its gradient is grad L + rho ||g||^(power - 2) H g: a Hessian-vector
product, so the update depends on the NME. `update` chooses which curvature
enters that product, by source (H = G + NME_act + NME_rest; docs/curvature.md,
"The Hessian decomposition"):

  "H"           the Hessian: the penalty's own gradient (the default);
  "G"           the Gauss-Newton part only: the NME removed (`nme=False`, the
                older spelling, means the same);
  "G+NME_rest"  G and the NME without the activations' second derivatives
                (products of weights across layers, normalization): the
                Hessian of the network whose activations are their ablated
                twins (same value and slope, sigma'' = 0), i.e. the penalty
                on the sigma''-ablated network;
  "G+NME_act"   G and the activations' part only, sum_u g_u sigma''(a_u)
                grad a_u grad a_u^T: H - H_twin + G.
The reported value is the penalty in every case; only the update changes.
"G+NME_act" and "G+NME_rest" need the objective's ablated twin
(`Objective.ablated_apply_fn`; the trainer builds it from the activation's
registered twin).

Two exact ways to get the gradient:
  mode="hvp"             a custom VJP: the gradient map is linearised once
                         (jax.linearize gives g and keeps the tangent
                         map), and the backward pass applies the tangent
                         map to g: H g without a second forward and
                         backward pass. Updates without H compute only
                         their products in the backward pass (G g = J^T
                         H_z J g: jvp, output Hessian, vjp; H_twin g:
                         forward over reverse on the twin).
  mode="double_backprop" jax.grad through a function that calls jax.grad
                         (reverse over reverse). Measured 13x a gradient on
                         a CPU ResNet-18 (docs/benchmarks.md). H only.
With gradient accumulation (config.grad_accum_steps), the update is computed in two
passes over the microbatches: the whole batch's g, then M g^ as the mean of the
microbatches' products (regularizers/accumulation.py): exact, whatever the mode.
The hvp form is the default. Its objective supports first-order
differentiation only (jax.grad, as the trainer uses); put it outermost in a
chain under transforms that differentiate twice (trace penalties). Like G,
the twin's Hessian is that of the objective's plain model loss at the
parameters the penalty is given (see nme_train.regularizers.objective).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from nme_train.curvature.products import gvp, hvp
from nme_train.regularizers.accumulation import accumulated_value_and_grad, mean_product
from nme_train.regularizers.objective import Objective, Transform, add_metrics
from nme_train.regularizers.registry import register_regularizer

MODES = ("hvp", "double_backprop")
# update -> (whether the linearised Hessian enters, the other products: (sign, product name))
UPDATES: dict[str, tuple[bool, tuple[tuple[float, str], ...]]] = {
    "H": (True, ()),
    "G": (False, ((1.0, "G"),)),
    "G+NME_rest": (False, ((1.0, "H_twin"),)),
    "G+NME_act": (True, ((1.0, "G"), (-1.0, "H_twin"))),
}
NEEDS_TWIN = tuple(u for u, (_, parts) in UPDATES.items() if any(n == "H_twin" for _, n in parts))


def _scaled_norm(norm: jax.Array, power: int) -> jax.Array:
    """||g||^power / power: the penalty's shape (its gradient is ||g||^(power-2) H g)."""
    return norm if power == 1 else 0.5 * norm**2


def loss_and_gradient_norm(
    value: Callable, params, power: int, matvec: Callable | None = None,
    with_hessian: bool | None = None,
) -> tuple[jax.Array, jax.Array, dict, jax.Array]:
    """(L, ||g||^power / power, aux, ||g||) with a VJP that costs one extra M v.

    `value(params) -> (L, aux)`. The backward pass returns
    ct_L * g + ct_pen * ||g||^(power - 2) * M g with M g = H g (when
    `with_hessian`, the default when `matvec` is None) plus `matvec(params, g)`.
    For the Hessian, the forward pass linearises the gradient map
    (`jax.linearize`): g comes out of it, and the backward pass applies only
    its linear part, instead of redoing a forward and a backward pass.
    """
    with_hessian = matvec is None if with_hessian is None else with_hessian
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
        if with_hessian:
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
        products = ([linear(v)] if linear is not None else []) + (
            [matvec(p, v)] if matvec is not None else [])
        mg = products[0] if len(products) == 1 else otu.tree_add(*products)
        return (jax.tree.map(lambda a, b: ct_loss * a + ct_pen * b, g, mg),)

    fn.defvjp(fwd, bwd)
    return fn(params)


def _products(obj: Objective, batch: dict) -> dict[str, Callable]:
    """The curvature products an update can add, on the objective's plain model loss."""
    x, targets = batch["inputs"], batch["targets"]

    def gauss_newton(p, v):
        return gvp(lambda q: obj.outputs(q, x), lambda z: obj.loss_fn(z, targets), p, v)

    def twin_hessian(p, v):
        if obj.ablated_apply_fn is None:
            raise ValueError("gradient_penalty: this update needs the network with its "
                             "activations' ablated twins (Objective.ablated_apply_fn); this "
                             "objective has none")
        return hvp(lambda q: obj.loss_fn(obj.outputs(q, x, ablated=True), targets), p, v)

    return {"G": gauss_newton, "H_twin": twin_hessian}


def _update_matvec(update: str, obj: Objective, batch: dict) -> tuple[bool, Callable | None]:
    """(whether H enters, the sum of the update's other products or None)."""
    with_hessian, parts = UPDATES[update]
    if not parts:
        return with_hessian, None
    products = _products(obj, batch)

    def matvec(p, v):
        terms = [otu.tree_scale(sign, products[name](p, v)) for sign, name in parts]
        return terms[0] if len(terms) == 1 else otu.tree_add(*terms)

    return with_hessian, matvec


def gradient_penalty(rho: float, power: int = 1, nme: bool = True,
                     mode: str = "hvp", update: str = "H") -> Transform:
    """L + rho ||grad L|| (power 1, the paper's) or L + (rho/2) ||grad L||^2 (power 2),
    whose update uses the curvature `update` (see the module docstring)."""
    if rho < 0:
        raise ValueError(f"gradient_penalty: rho={rho} must be >= 0")
    if power not in (1, 2):
        raise ValueError(f"gradient_penalty: power={power} must be 1 or 2")
    if mode not in MODES:
        raise ValueError(f"gradient_penalty: mode={mode!r} must be one of {MODES}")
    if update not in UPDATES:
        raise ValueError(f"gradient_penalty: update={update!r} must be one of "
                         f"{tuple(UPDATES)}")
    if not nme:
        if update not in ("H", "G"):
            raise ValueError(f"gradient_penalty: nme=False (the update without the NME) "
                             f"contradicts update={update!r}; give update alone")
        update = "G"
    if mode == "double_backprop" and update != "H":
        raise ValueError(f"gradient_penalty: update={update!r} needs mode='hvp' (its update "
                         "is not the gradient of a scalar that double backprop could "
                         "differentiate)")

    def transform(obj: Objective) -> Objective:
        def value(params, batch, rng):
            if mode == "double_backprop":
                (loss, aux), g = jax.value_and_grad(obj.value, has_aux=True)(params, batch, rng)
                norm = otu.tree_norm(g)
                penalty = _scaled_norm(norm, power)
            else:
                with_hessian, matvec = _update_matvec(update, obj, batch)
                loss, penalty, aux, norm = loss_and_gradient_norm(
                    lambda p: obj(p, batch, rng), params, power, matvec, with_hessian)
            total = loss + rho * penalty
            return total, add_metrics(aux, **{
                "gradient_penalty/grad_norm": jax.lax.stop_gradient(norm),
                "gradient_penalty/penalty": jax.lax.stop_gradient(rho * penalty)})

        def accumulate(params, microbatches, rng):
            """Two passes: the whole batch's gradient g, then M g^ as the mean of the
            microbatches' products (M is a mean over the batch too)."""
            (loss, aux), g = accumulated_value_and_grad(obj, params, microbatches, rng)
            norm = otu.tree_norm(g)
            weight = 1.0 / jnp.maximum(norm, 1e-12) if power == 1 else 1.0
            v = jax.tree.map(lambda x: x * weight, g)
            with_hessian, parts = UPDATES[update]

            def product(microbatch):
                terms = []
                if with_hessian:
                    terms.append(hvp(lambda p: obj.value(p, microbatch, rng)[0], params, v))
                if parts:
                    terms.append(_update_matvec(update, obj, microbatch)[1](params, v))
                return terms[0] if len(terms) == 1 else otu.tree_add(*terms)

            mg = mean_product(product, microbatches)
            penalty = _scaled_norm(norm, power)
            grads = jax.tree.map(lambda a, b: a + rho * b, g, mg)
            return (loss + rho * penalty, add_metrics(aux, **{
                "gradient_penalty/grad_norm": norm,
                "gradient_penalty/penalty": rho * penalty})), grads

        return obj.with_value(value, accumulate)

    return transform



def twins_needed(kwargs: dict) -> tuple[str, ...]:
    """The updates by source take the network's ablated twin (Objective.ablated_apply_fn)."""
    return ("ablated_apply_fn",) if kwargs.get("update", "H") in NEEDS_TWIN else ()


register_regularizer("gradient_penalty", gradient_penalty, needs=twins_needed,
                     example={"rho": 0.05})
