"""E10: GELU, the gradient penalty against the penalty with the NME removed from its update.

Paper's finding: removing the NME from the update (H g replaced by G g in
the penalty's gradient, `gradient_penalty(nme=False)`) hurts at every rho.

Grid: {none, penalty(rho), penalty without NME(rho)} x 2 seeds, GELU.
"""

from configs.paper import common
from nme_train.experiments import experiment_config, methods, product, seeds

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "rho", "lines": ("method",)}


def base(scale: str):
    return common.base(scale, "gelu")


def grid(scale: str):
    rhos = common.study(scale, common.RHOS, common.STUDY_RHOS)
    return product(methods({"none": (), "gp": rhos, "gp_no_nme": rhos}), seeds(common.SEEDS))


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
