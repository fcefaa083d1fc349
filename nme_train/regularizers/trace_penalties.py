"""Trace penalties: L + coef * Tr(H) and L + coef * Tr(G), with unbiased estimators.

Bishop's expansion of weight noise, E L(theta + eps) ~ L + (sigma^2/2) Tr(H),
makes coef = sigma^2 / 2 the weight-noise-equivalent coefficient.

hessian_trace_penalty: Tr(H) by Hutchinson, mean over Rademacher probes v of
  v^T H v = d^2/dt^2 L(theta + t v) at t = 0, taken forward-over-forward (two
  nested jvps), then differentiated once more by the trainer: third
  derivatives of the model, as reverse over forward over forward, which
  costs about half of reverse over an HVP (forward over reverse). The
  paper used 1 probe, and 5 in a follow-up.

gauss_newton_trace_penalty, two unbiased estimators:
  "sampled_labels": labels y' drawn from the model's own softmax (held
     fixed); with g' = grad of the mean cross-entropy against y' over a batch
     of N examples, E ||g'||^2 = Tr(G) / N (the cross terms between examples
     vanish because E[p - e_y'] = 0), so Tr(G) ~ N * mean_s ||g'_s||^2. Needs
     outputs that are softmax cross-entropy logits. One more backward pass
     per sample; the gradient of ||g'||^2 is 2 H' g', from the tangent map of
     one linearisation of all the gradients.
  "hutchinson": v^T G v = (J v)^T H_z (J v) for Rademacher v: one jvp of the
     model and an output-space Hessian product; any loss.
The gradient of either estimate is the exact derivative of the estimate, so
the NME still enters the update through grad Tr(G), as the paper notes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from nme_train.curvature.products import output_hvp, tree_dot
from nme_train.regularizers.objective import Objective, Transform, add_metrics, loss_at
from nme_train.regularizers.weight_noise import random_like

GN_ESTIMATORS = ("sampled_labels", "hutchinson")


def rademacher_like(rng: jax.Array, tree):
    """Independent +-1 entries shaped like `tree`."""
    return random_like(jax.random.rademacher, rng, tree)


def second_directional_derivative(f, params, v) -> jax.Array:
    """v^T H v for the scalar function f at params, by two nested jvps."""
    def directional(p):
        return jax.jvp(f, (p,), (v,))[1]

    return jax.jvp(directional, (params,), (v,))[1]


def _check(coef: float, count: int, what: str, name: str) -> None:
    if coef < 0:
        raise ValueError(f"{name}: coef={coef} must be >= 0")
    if count < 1:
        raise ValueError(f"{name}: {what}={count} must be >= 1")


def hessian_trace_penalty(coef: float, num_probes: int = 1) -> Transform:
    """L + coef * Tr(H), Tr(H) by Hutchinson with `num_probes` Rademacher probes."""
    _check(coef, num_probes, "num_probes", "hessian_trace_penalty")

    def transform(obj: Objective) -> Objective:
        def value(params, batch, rng):
            probe_rng, rng = jax.random.split(rng)
            loss, aux = obj(params, batch, rng)
            f = loss_at(obj, batch, rng)
            estimates = [second_directional_derivative(f, params, rademacher_like(k, params))
                         for k in jax.random.split(probe_rng, num_probes)]
            trace = jnp.mean(jnp.stack(estimates))
            return loss + coef * trace, add_metrics(aux, **{
                "hessian_trace_penalty/trace": jax.lax.stop_gradient(trace)})

        return obj.with_value(value)

    return transform


def gauss_newton_trace_penalty(coef: float, num_samples: int = 1,
                               estimator: str = "sampled_labels") -> Transform:
    """L + coef * Tr(G), with the `sampled_labels` or `hutchinson` estimator."""
    _check(coef, num_samples, "num_samples", "gauss_newton_trace_penalty")
    if estimator not in GN_ESTIMATORS:
        raise ValueError(f"gauss_newton_trace_penalty: estimator={estimator!r} must be one "
                         f"of {GN_ESTIMATORS}")

    def transform(obj: Objective) -> Objective:
        def value(params, batch, rng):
            sample_rng, rng = jax.random.split(rng)
            inputs = batch["inputs"]
            if estimator == "sampled_labels":
                keys = jax.random.split(sample_rng, num_samples)
                loss, sq_norms, aux = _loss_and_sampled_gradient_norms(obj, params, batch,
                                                                       rng, keys)
                n = aux["outputs"].shape[0]
                estimates = [n * sq for sq in sq_norms]  # Tr G ~ N ||g'||^2
            else:
                loss, aux = obj(params, batch, rng)

                def jv_quadratic(p, v):
                    z, jv = jax.jvp(lambda q: obj.outputs(q, inputs), (p,), (v,))
                    hz = output_hvp(lambda y: obj.loss_fn(y, batch["targets"]), z, jv)
                    return tree_dot(jv, hz)

                estimates = [jv_quadratic(params, rademacher_like(k, params))
                             for k in jax.random.split(sample_rng, num_samples)]
            trace = jnp.mean(jnp.stack(estimates))
            return loss + coef * trace, add_metrics(aux, **{
                "gauss_newton_trace_penalty/trace": jax.lax.stop_gradient(trace)})

        return obj.with_value(value)

    return transform


def _loss_and_sampled_gradient_norms(obj: Objective, params, batch, rng, keys):
    """(L, [||g'_s||^2 for each key], aux) with a VJP of one linearisation.

    g'_s is the gradient of the mean cross-entropy against labels drawn (key
    s) from the model's own softmax, held fixed. The forward pass linearises
    the map params -> (grad L, g'_1, ...), which shares one forward pass of
    the model between all the gradients; the backward pass returns
    ct_L * grad L + sum_s ct_s * 2 H'_s g'_s, each H'_s g'_s by the
    linearisation's tangent map (no further forward or backward pass).
    """
    value_and_grad = jax.value_and_grad(obj.value, has_aux=True)

    def gradients(p):
        (loss, aux), g = value_and_grad(p, batch, rng)
        logits = jax.lax.stop_gradient(aux["outputs"])
        sampled = []
        for k in keys:
            labels = jax.random.categorical(k, logits)

            def ce(q, labels=labels):
                z = obj.outputs(q, batch["inputs"])
                return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, labels))

            sampled.append(jax.grad(ce)(p))
        return (g, sampled), (loss, aux)

    def outputs(g, sampled, loss, aux):
        return loss, [tree_dot(gs, gs) for gs in sampled], aux

    @jax.custom_vjp
    def fn(p):
        (g, sampled), (loss, aux) = gradients(p)
        return outputs(g, sampled, loss, aux)

    def fwd(p):
        (g, sampled), linear, (loss, aux) = jax.linearize(gradients, p, has_aux=True)
        return outputs(g, sampled, loss, aux), (g, sampled, linear)

    def bwd(residuals, cotangents):
        g, sampled, linear = residuals
        ct_loss, ct_norms = cotangents[0], cotangents[1]
        total = jax.tree.map(lambda x: ct_loss * x, g)
        for s, (gs, ct) in enumerate(zip(sampled, ct_norms)):
            hs_gs = linear(gs)[1][s]  # H'_s g'_s (other tangent outputs are unused)
            total = jax.tree.map(lambda t, h, ct=ct: t + 2.0 * ct * h, total, hs_gs)
        return (total,)

    fn.defvjp(fwd, bwd)
    return fn(params)
