"""E2: the gradient penalty with ReLU, GELU and GELU with its NME ablated; accuracy against rho.

Paper's finding: removing the NME information (GELU's value and slope with
its second derivative forced to 0, `gelu_nme_ablated`) removes the
penalty's benefit: the ablated GELU behaves like ReLU.

Grid: activation {relu, gelu, gelu_nme_ablated} x {none, penalty(rho)} x
seeds; in the study also x {with, without BatchNorm}, at the rhos where E1
separates ReLU from GELU. Its relu and gelu points are E1's: sweep both into
one directory and they run once.
"""

from configs.paper import common
from nme_train.sweeps.grids import activations, experiment_config, methods, product

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "rho", "lines": ("activation",), "panels": "bn",
        "symlog_x": 0.1, "zoom": 6,
        "contrasts": [["activation", "gelu", "gelu_nme_ablated"], ["activation", "gelu", "relu"],
                      ["activation", "gelu_nme_ablated", "relu"]]}


def base(scale: str):
    return common.base(scale)


def grid(scale: str):
    rhos = common.study(scale, common.RHOS, common.STUDY_SEPARATION_RHOS)
    return product(common.norm_axis(scale), activations(("relu", "gelu", "gelu_nme_ablated")),
                   methods({"none": (), "gp": rhos}), common.seed_axis(scale))


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
