"""Trace penalties: L + coef * Tr(H) and L + coef * Tr(G), with unbiased estimators.

Bishop's expansion of weight noise, E L(theta + eps) ~ L + (sigma^2/2) Tr(H),
makes coef = sigma^2 / 2 the weight-noise-equivalent coefficient.

hessian_trace_penalty: Tr(H) by Hutchinson, mean over Rademacher probes v of
  v^T H v = d^2/dt^2 L(theta + t v) at t = 0, taken forward-over-forward (two
  nested jvps), then differentiated once more by the trainer: third
  derivatives of the model, as reverse over forward over forward, which
  costs about half of reverse over an HVP (forward over reverse). The
  paper used 1 probe, and 5 in a follow-up.

gauss_newton_trace_penalty: L + coef * Tr(G), three estimators of Tr(G), each
  the mean over `num_samples` draws. All three values are unbiased; their
  gradients are not all unbiased for grad Tr(G):
  "hutchinson" (the default): v^T G v = (J v)^T H_z (J v) for a Rademacher v,
     one jvp of the model and an output-space Hessian product; any loss. v
     does not depend on theta, so E_v grad(v^T G v) = grad Tr(G): the
     gradient is unbiased. Chosen as the default because it is the one
     estimator whose value and gradient are both unbiased for any loss at
     the cost of a gradient penalty's update (a jvp, and its reverse pass).
  "sampled_labels" (the paper's estimator): labels y' drawn from the model's
     own softmax, held fixed; with g' = grad of the mean cross-entropy against
     y' over a batch of N examples, E ||g'||^2 = Tr(G) / N (the cross terms
     between examples vanish because E[p - e_y'] = 0), so Tr(G) ~ N ||g'||^2.
     Its gradient is NOT unbiased for grad Tr(G): y' is drawn from
     softmax(f(theta)), which depends on theta, and differentiating with y'
     held fixed drops the score-function term
        (1/N) sum_i sum_y (d p_iy / d theta) ||J_i^T (p_i - e_y)||^2.
     On a 12-example tanh MLP its expected update differs from grad Tr(G) by
     tens of percent (tests/test_regularizers.py measures it). Kept to
     reproduce the paper. Softmax cross-entropy outputs only.
  "sampled_labels_score": the same value, plus a score-function (REINFORCE)
     term that restores an unbiased gradient: the surrogate
        mean_i sg(u_i^2 - b_i^2) log p_i(y'_i),   value 0 once its own
     stop-gradient is subtracted, where u_i = (J_i v)^T (p_i - e_y'_i) for one
     shared Rademacher v (E_v u_i^2 = ||J_i^T (p_i - e_y'_i)||^2, for every
     example from one jvp), and b_i the same with an independent label (a
     baseline that does not depend on y'_i, so the term stays unbiased, and
     cuts its variance). Costs one jvp and its reverse pass on top of
     "sampled_labels". Softmax cross-entropy outputs only.
The gradient of any estimate includes the NME (grad Tr G differentiates J),
as the paper notes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from nme_train.curvature.estimators import rademacher_like
from nme_train.curvature.losses import cross_entropy
from nme_train.curvature.products import output_hvp
from nme_train.regularizers.objective import Objective, Transform, add_metrics, loss_at
from nme_train.regularizers.registry import register_regularizer

GN_ESTIMATORS = ("hutchinson", "sampled_labels", "sampled_labels_score")


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
                               estimator: str = "hutchinson") -> Transform:
    """L + coef * Tr(G), Tr(G) by `estimator` (module docstring): hutchinson, whose value
    and gradient are unbiased; sampled_labels, the paper's, whose gradient is biased;
    sampled_labels_score, the paper's with a score-function term (unbiased)."""
    _check(coef, num_samples, "num_samples", "gauss_newton_trace_penalty")
    if estimator not in GN_ESTIMATORS:
        raise ValueError(f"gauss_newton_trace_penalty: estimator={estimator!r} must be one "
                         f"of {GN_ESTIMATORS}")

    def transform(obj: Objective) -> Objective:
        def value(params, batch, rng):
            sample_rng, score_rng, rng = jax.random.split(rng, 3)
            inputs = batch["inputs"]
            if estimator != "hutchinson":
                keys = jax.random.split(sample_rng, num_samples)
                loss, sq_norms, aux = _loss_and_sampled_gradient_norms(obj, params, batch,
                                                                       rng, keys)
                n = aux["outputs"].shape[0]
                estimates = [n * sq for sq in sq_norms]  # Tr G ~ N ||g'||^2
                if estimator == "sampled_labels_score":
                    loss = loss + coef * score_function_term(obj, params, inputs, keys,
                                                             score_rng)
            else:
                loss, aux = obj(params, batch, rng)

                def jv_quadratic(p, v):
                    z, jv = jax.jvp(lambda q: obj.outputs(q, inputs), (p,), (v,))
                    hz = output_hvp(lambda y: obj.loss_fn(y, batch["targets"]), z, jv)
                    return otu.tree_vdot(jv, hz)

                estimates = [jv_quadratic(params, rademacher_like(k, params))
                             for k in jax.random.split(sample_rng, num_samples)]
            trace = jnp.mean(jnp.stack(estimates))
            return loss + coef * trace, add_metrics(aux, **{
                "gauss_newton_trace_penalty/trace": jax.lax.stop_gradient(trace)})

        return obj.with_value(value)

    return transform


def score_function_term(obj: Objective, params, inputs, keys, rng) -> jax.Array:
    """A zero-valued surrogate whose gradient is the score-function term of Tr G's gradient.

    For labels y'_s drawn with `keys` (those of the sampled-label estimate),
    the missing term of its gradient is E[(1/N) sum_i ||a_i||^2 grad log
    p_i(y'_i)] with a_i = J_i^T (p_i - e_y'_i) (the cross terms between
    examples have zero mean). Estimated, unbiasedly, as the gradient of
    mean_i w_i log p_i(y'_i) with stop-gradient weights w_i = u_i^2 - b_i^2:
    u_i = (J_i v)^T (p_i - e_y'_i) for a Rademacher v (E_v u_i^2 = ||a_i||^2);
    b_i the same with an independent label, whose expected product with the
    score is zero.
    """
    probe_rng, baseline_rng = jax.random.split(rng)
    v = rademacher_like(probe_rng, params)
    logits, jv = jax.jvp(lambda q: obj.outputs(q, inputs), (params,), (v,))
    jv = jax.lax.stop_gradient(jv).astype(jnp.float32)
    probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32))
    log_probs = jax.nn.log_softmax(logits)
    num_classes = logits.shape[-1]
    terms = []
    for key, base_key in zip(keys, jax.random.split(baseline_rng, len(keys))):
        labels = sample_labels(key, logits)  # the draws of the sampled-label estimate
        others = sample_labels(base_key, logits)
        u = jnp.sum(jv * (probs - jax.nn.one_hot(labels, num_classes)), axis=-1)
        b = jnp.sum(jv * (probs - jax.nn.one_hot(others, num_classes)), axis=-1)
        weights = jax.lax.stop_gradient(u**2 - b**2).astype(log_probs.dtype)
        chosen = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        surrogate = jnp.mean(weights * chosen)
        terms.append(surrogate - jax.lax.stop_gradient(surrogate))
    return jnp.mean(jnp.stack(terms))


def _loss_and_sampled_gradient_norms(obj: Objective, params, batch, rng, keys):
    """(L, [||g'_s||^2 for each key], aux) with a VJP of one linearisation.

    g'_s is the gradient of the mean cross-entropy against labels drawn (key
    s) from the model's own softmax, held fixed. The forward pass linearises
    the map from the parameters to the sampled gradients (and, for a wrapped
    objective, grad L), sharing one forward pass of the model between them;
    the backward pass returns ct_L * grad L + sum_s ct_s * 2 H'_s g'_s, each
    H'_s g'_s by the linearisation's tangent map (no further forward or
    backward pass).

    On a plain objective the sampled losses are taken on the objective's own
    outputs, and grad L is not computed in the forward pass at all: the
    linearised map is (params, t) -> grad [CE'_1 + t L, CE'_2, ...] at t = 0,
    whose tangent along (2 ct_1 g'_1, ct_L) is 2 ct_1 H'_1 g'_1 + ct_L grad L.
    The two cotangents meet at the model outputs, so one tangent backward pass
    carries both: the update costs what a gradient penalty's does, one
    backward pass less than computing grad L separately.
    """
    if not obj.plain:
        return _wrapped_objective_sampled_norms(obj, params, batch, rng, keys)

    def gradients(p, t):
        def losses(q):
            loss, aux = obj.value(q, batch, rng)
            logits = aux["outputs"]
            sampled = [jnp.mean(cross_entropy(logits, sample_labels(k, logits))) for k in keys]
            return (sampled, loss), aux

        (sampled, loss), pullback, aux = jax.vjp(losses, p, has_aux=True)
        grads = []
        for s in range(len(keys)):
            ct_sampled = [jnp.asarray(1.0 if i == s else 0.0, x.dtype)
                          for i, x in enumerate(sampled)]
            ct_loss = t.astype(loss.dtype) if s == 0 else jnp.zeros_like(loss)
            grads.append(pullback((ct_sampled, ct_loss))[0])
        return grads, (loss, aux)

    @jax.custom_vjp
    def fn(p):
        sampled, (loss, aux) = gradients(p, jnp.zeros((), jnp.float32))
        return loss, [otu.tree_vdot(gs, gs) for gs in sampled], aux

    def fwd(p):
        sampled, linear, (loss, aux) = jax.linearize(
            gradients, p, jnp.zeros((), jnp.float32), has_aux=True)
        return (loss, [otu.tree_vdot(gs, gs) for gs in sampled], aux), (sampled, linear)

    def bwd(residuals, cotangents):
        sampled, linear = residuals
        ct_loss, ct_norms = cotangents[0], cotangents[1]
        total = None
        for s, (gs, ct) in enumerate(zip(sampled, ct_norms)):
            t_dot = ct_loss if s == 0 else jnp.zeros_like(ct_loss)
            term = linear(jax.tree.map(lambda x, ct=ct: 2.0 * ct * x, gs),
                          t_dot.astype(jnp.float32))[s]
            total = term if total is None else jax.tree.map(jnp.add, total, term)
        return (total,)

    fn.defvjp(fwd, bwd)
    return fn(params)


def sample_labels(key: jax.Array, logits: jax.Array) -> jax.Array:
    """Labels drawn from softmax(logits), held fixed (no gradient).

    Drawn from float32 logits whatever the model's dtype, so that a float64
    reference and a float32 or bf16 run draw the same labels from one key.
    """
    return jax.random.categorical(key, jax.lax.stop_gradient(logits).astype(jnp.float32))


def _wrapped_objective_sampled_norms(obj: Objective, params, batch, rng, keys):
    """As above for an objective another transform has wrapped: grad L separately."""
    value_and_grad = jax.value_and_grad(obj.value, has_aux=True)

    def gradients(p):
        (loss, aux), g = value_and_grad(p, batch, rng)
        logits = jax.lax.stop_gradient(obj.outputs(p, batch["inputs"]))
        sampled = []
        for k in keys:
            labels = sample_labels(k, logits)
            sampled.append(jax.grad(
                lambda q, labels=labels: jnp.mean(cross_entropy(
                    obj.outputs(q, batch["inputs"]), labels)))(p))
        return (g, sampled), (loss, aux)

    def outputs(sampled, loss, aux):
        return loss, [otu.tree_vdot(gs, gs) for gs in sampled], aux

    @jax.custom_vjp
    def fn(p):
        (g, sampled), (loss, aux) = gradients(p)
        return outputs(sampled, loss, aux)

    def fwd(p):
        (g, sampled), linear, (loss, aux) = jax.linearize(gradients, p, has_aux=True)
        return outputs(sampled, loss, aux), (g, sampled, linear)

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


register_regularizer("hessian_trace_penalty", hessian_trace_penalty, example={"coef": 1e-4})
register_regularizer("gauss_newton_trace_penalty", gauss_newton_trace_penalty,
                     example={"coef": 1e-3})
