"""E8: accuracy against beta of beta-GELU for SGD, the gradient penalty and the GN trace penalty.

Paper's finding: the penalty helps at small beta (smooth activations) and
hurts as beta grows towards ReLU (sigma'' concentrates within ~1/beta of 0);
the Gauss-Newton trace penalty stays stable.

Activation x * Phi(beta x). Every run records the fraction of non-zero
sigma'' per layer at its start and its end (the probe of E9, which shares
the plain-SGD runs). In the study the plain runs use both BatchNorm
variants (E9 compares them) and the penalties the CNN without BatchNorm,
at a rho where E1 separates ReLU from GELU.

Grid: beta x {none, penalty(rho), GN trace(sigma^2)} x seeds.
"""

from configs.paper import common
from nme_train.sweeps.grids import axis, experiment_config, methods, product

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "beta", "lines": ("method",), "log_x": True, "panels": "bn",
        "zoom": 6}


def base(scale: str):
    return common.with_sparsity_probe(common.base(scale, "beta_gelu"))


def betas(scale: str):
    return axis("beta", "model.beta", common.study(scale, common.BETAS, common.STUDY_BETAS))


def plain(scale: str):
    """The unregularized points (shared with E9)."""
    return product(common.norm_axis(scale), betas(scale), methods({"none": ()}),
                   common.seed_axis(scale))


def grid(scale: str):
    rho = common.study(scale, 0.1, common.STUDY_SEPARATION_RHOS[0])
    sigma2 = common.study(scale, 1e-3, 1e-2)
    penalised = product(common.norm_axis(scale, (False,)), betas(scale),
                        methods({"gp": (rho,), "gn_trace": (sigma2,)}), common.seed_axis(scale))
    return plain(scale) + penalised


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
