"""E1: SAM against the gradient penalty, with GELU and with ReLU; accuracy against rho.

Paper's finding: the penalty L + rho ||grad L|| tracks SAM with GELU; with
ReLU it degrades at large rho, down below no regularization (ReLU has no
activation second derivative, so the NME the penalty's update relies on is
missing).

Grid: activation {relu, gelu} x {none, SAM(rho), penalty(rho)} x seeds; in
the study also x {with, without BatchNorm} (`bn`).

    nme-sweep --config configs/paper/e1.py:cifar10 --workdir DIR
    nme-summarize DIR
"""

from configs.paper import common
from nme_train.sweeps.grids import activations, experiment_config, methods, product

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "rho", "lines": ("method", "activation"), "panels": "bn",
        "symlog_x": 0.1, "zoom": 6,
        "contrasts": [["activation", "gelu", "relu"], ["method", "gp", "sam"]]}


def base(scale: str):
    return common.base(scale)


def grid(scale: str):
    rhos = common.study(scale, common.RHOS, common.STUDY_RHOS)
    return product(common.norm_axis(scale), activations(("relu", "gelu")),
                   methods({"none": (), "sam": rhos, "gp": rhos}), common.seed_axis(scale))


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
