"""How far each trace-penalty gradient is from the true gradient of the trace, on a tiny MLP.

    python tools/gn_estimator_bias.py [--seeds 0 1 2 3] [--draws 4000]

Output of the default run: docs/measurements/gn_estimator_bias.jsonl.

For a 12-example, 3-class tanh MLP in float64 (parameters drawn with each
seed), the dense references are Tr G = tr(J^T H_z J) and Tr H = tr(∇²L) as
functions of the flat parameters, differentiated by jax.grad: ∇Tr G and ∇Tr H.
For each estimator of the penalty the tool averages the penalty's gradient
over `draws` keys and prints, per seed, the relative distance of that mean
from the reference, its cosine with it, and the per-draw standard deviation
relative to ‖∇Tr‖ (the noise one training step sees). The paper's
`sampled_labels` estimator is also compared with the exact expectation of
its update, the gradient with the label distribution p held fixed
(`dense_traces`), which is what it is unbiased for. One JSON line per seed.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from nme_train import regularizers as reg

N, D, H, C = 12, 4, 5, 3


def cross_entropy(logits, labels):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


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


def penalty_gradients(penalty: reg.Transform, params, batch, draws: int,
                      activation=jnp.tanh, seed: int = 11) -> np.ndarray:
    """[draws, P]: the gradient of the penalty term alone (coef 1), one row per key."""
    model = functools.partial(mlp, activation=activation)
    obj = penalty(reg.objective(model, cross_entropy))
    plain = reg.objective(model, cross_entropy)

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--draws", type=int, default=4000)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    for seed in args.seeds:
        params, batch = problem(seed)
        flat, ref = mlp_references(params, batch)
        grad_tr_g, grad_tr_h, fixed = (np.asarray(jax.jit(jax.grad(ref[name]))(flat))
                                       for name in ("trace_g", "trace_h", "fixed_p"))
        out: dict = {"seed": seed, "trace_g": float(ref["trace_g"](flat)),
                     "paper_expected_update_vs_grad_trace_g": compare(fixed[None], grad_tr_g)}
        for name in ("hutchinson", "sampled_labels", "sampled_labels_score"):
            samples = penalty_gradients(reg.gauss_newton_trace_penalty(1.0, estimator=name),
                                        params, batch, args.draws)
            out[f"gn_{name}"] = compare(samples, grad_tr_g)
            if name == "sampled_labels":
                out["gn_sampled_labels_vs_fixed_p"] = compare(samples, fixed)
        out["hessian_trace"] = compare(
            penalty_gradients(reg.hessian_trace_penalty(1.0), params, batch, args.draws),
            grad_tr_h)
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
