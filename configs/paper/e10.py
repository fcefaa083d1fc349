"""E10: GELU, the gradient penalty against the penalty with the NME removed from its update.

Paper's finding: removing the NME from the update (H g replaced by G g in
the penalty's gradient, `gradient_penalty(nme=False)`) hurts at every rho.

Grid: GELU x {none, penalty(rho), penalty without NME(rho)} x seeds; in the
study also x {with, without BatchNorm}. Its plain and penalty points are
E1's GELU points: sweep both into one directory and they run once.
"""

from configs.paper import common
from nme_train.sweeps.grids import activations, experiment_config, methods, product

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "rho", "lines": ("method",), "panels": "bn", "symlog_x": 0.1,
        "zoom": 6,
        "contrasts": [["method", "gp", "gp_no_nme"]]}


def base(scale: str):
    return common.base(scale)


def grid(scale: str):
    rhos = common.study(scale, common.RHOS, common.STUDY_RHOS)
    return product(common.norm_axis(scale), activations(("gelu",)),
                   methods({"none": (), "gp": rhos, "gp_no_nme": rhos}), common.seed_axis(scale))


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
