"""E9: fraction of non-zero sigma'' against beta, before and after training.

Paper's finding: sigma'' of beta-GELU becomes very sparse at large beta,
and sparser after training than at initialisation.

The measure: per layer, the fraction of pre-activations x (over a fixed
probe batch of training examples) with |sigma''(x)| > probes.sparsity_threshold
(1e-3); the figure is its mean over layers at the first and the last probe.
The runs are E8's plain-SGD runs (same base and point names), in the study
with and without BatchNorm.
"""

from configs.paper import common, e8
from nme_train.sweeps.grids import experiment_config

SCALES = common.SCALES
PLOT = {"kind": "sparsity", "x": "beta", "log_x": True, "panels": "bn"}
base = e8.base


def grid(scale: str):
    return e8.plain(scale)


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
