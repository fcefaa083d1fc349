"""E5: E4's trace penalties with 5 Hutchinson probes.

Paper's finding: with 5 probes the Hessian trace penalty is still unstable,
so its failure is not the variance of the one-probe estimator.

Grid: {Hessian trace, GN trace (Hutchinson), GN trace (sampled labels)},
each with 5 probes or draws (tag `probes=5`), x sigma^2 x seeds, on E4's
base; beside them E4's one-probe points and unregularized points (shared
runs), for the comparison. The study runs one sigma^2, the smaller of E4's.
"""

from configs.paper import common, e4
from nme_train.sweeps.grids import Point, activations, experiment_config, methods, product

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "sigma2", "lines": ("method", "probes"), "log_x": True,
        "zoom": 6,
        "contrasts": [["probes", 5, None]]}
base = e4.base


def grid(scale: str):
    sigma2s = common.study(scale, common.SIGMA2S, common.STUDY_SIGMA2S[:1])
    plain = methods({"none": ()}, zero_name="sigma2")
    one = methods({"hessian_trace": sigma2s, "gn_trace": sigma2s, "gn_trace_sampled": sigma2s})
    five = methods({"hessian_trace": sigma2s, "gn_trace": sigma2s, "gn_trace_sampled": sigma2s},
                   options={"hessian_trace": {"num_probes": 5},
                            "gn_trace": {"num_samples": 5},
                            "gn_trace_sampled": {"num_samples": 5}})
    head = (common.norm_axis(scale, (False,)), activations(("gelu",)))
    return (product(*head, plain + one, common.seed_axis(scale))
            + product(*head, five, [Point.of({"probes": 5})], common.seed_axis(scale)))


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
