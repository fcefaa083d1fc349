"""E3: ReLU with synthetic NME (ImageNet); the gradient penalty against rho.

Paper's finding: giving ReLU a surrogate second derivative (that of GELU,
through the derivative rule of `relu_synthetic_nme`, value and slope still
ReLU's) restores the penalty's benefit as rho grows.

Grid: activation {relu, relu_synthetic_nme (beta 1: GELU's sigma'')} x
{none, penalty(rho)} x 2 seeds. ImageNet is the paper's setting; the
other scales run the same grid.
"""

from configs.paper import common
from nme_train.experiments import activations, experiment_config, methods, product, seeds

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "rho", "lines": ("activation",)}


def base(scale: str):
    return common.base(scale)


def grid(scale: str):
    rhos = common.study(scale, common.RHOS, common.STUDY_RHOS)
    return product(activations(("relu", "relu_synthetic_nme"), beta=1.0),
                   methods({"none": (), "gp": rhos}), seeds(common.SEEDS))


def get_config(arg: str = "imagenet"):
    return experiment_config(base, grid, SCALES, arg)
