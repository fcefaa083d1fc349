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
import json
import sys

import jax
import numpy as np

from nme_train import regularizers as reg
from nme_train.regularizers.dense_reference import (
    compare,
    mlp_references,
    penalty_gradients,
    problem,
)


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
