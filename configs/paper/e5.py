"""E5: E4's trace penalties with 5 Hutchinson probes.

Paper's finding: with 5 probes the Hessian trace penalty is still unstable,
so its failure is not the variance of the one-probe estimator.

Grid: {none, Hessian trace (5 probes), GN trace (5 sampled labels)} x
sigma^2 x 2 seeds, on E4's base (GELU, trace probes).
"""

from configs.paper import common, e4
from nme_train.experiments import experiment_config, methods, product, seeds

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "sigma2", "lines": ("method",), "log_x": True}
base = e4.base


def grid(scale: str):
    sigma2s = common.study(scale, common.SIGMA2S, common.STUDY_SIGMA2S)
    five = methods({"none": (), "hessian_trace": sigma2s, "gn_trace": sigma2s},
                   options={"hessian_trace": {"num_probes": 5},
                            "gn_trace": {"num_samples": 5}})
    return product(five, seeds(common.SEEDS))


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
