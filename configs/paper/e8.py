"""E8: accuracy against beta of beta-GELU for SGD, the gradient penalty and the GN trace penalty.

Paper's finding: the penalty helps at small beta (smooth activations) and
hurts as beta grows towards ReLU (sigma'' concentrates within ~1/beta of 0);
the Gauss-Newton trace penalty stays stable.

Activation x * Phi(beta x). Every run records the fraction of non-zero
sigma'' per layer at its start and its end (the probe of E9, which shares
the plain-SGD runs).

Grid: beta x {none, penalty(rho), GN trace(sigma^2)} x 2 seeds.
"""

from configs.paper import common
from nme_train.experiments import axis, experiment_config, methods, product, seeds

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "beta", "lines": ("method",), "log_x": True}


def base(scale: str):
    return common.with_sparsity_probe(common.base(scale, "beta_gelu"))


def betas(scale: str):
    return axis("beta", "model.beta", common.study(scale, common.BETAS, common.STUDY_BETAS))


def grid(scale: str):
    rho = common.study(scale, 0.1, 0.5)
    sigma2 = common.study(scale, 1e-3, 1e-2)
    return product(betas(scale), methods({"none": (), "gp": (rho,), "gn_trace": (sigma2,)}),
                   seeds(common.SEEDS))


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
