"""E3: ReLU with synthetic NME; the gradient penalty against rho.

Paper's finding (on ImageNet): giving ReLU a surrogate second derivative
(that of beta-GELU, through the derivative rule of `relu_synthetic_nme`;
value and slope still ReLU's) restores the penalty's benefit as rho grows.

Grid: ReLU x {none, penalty(rho)} and relu_synthetic_nme x beta
(SYNTHETIC_BETAS: beta = 1 injects GELU's sigma'', larger beta a sharper one)
x penalty(rho), x seeds. In the earlier study the synthetic points ran
without BatchNorm only, on the premise that a ReLU network without
BatchNorm has no NME. That premise is false: ReLU has no activation part
of the NME (sigma'' = 0), and without normalization each layer's diagonal
NME block vanishes (the network is linear in each layer's own weights), so
Tr NME = 0; but the blocks between layers remain (on a 3-layer ReLU MLP,
||NME g^|| = 0.78 against ||G g^|| = 1.69). The probes' nme_activation /
nme_rest split measures the two parts. The ReLU points are E1's (both
BatchNorm variants), at the rhos where E1 separates ReLU from GELU.
"""

from configs.paper import common
from nme_train.sweeps.grids import activations, experiment_config, methods, product

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "rho", "lines": ("activation", "beta"), "panels": "bn",
        "symlog_x": 0.1, "zoom": 6,
        "contrasts": [["activation", "relu_synthetic_nme", "relu"]]}


def base(scale: str):
    return common.base(scale)


def grid(scale: str):
    rhos = common.study(scale, common.RHOS, common.STUDY_SEPARATION_RHOS)
    relu = product(common.norm_axis(scale), activations(("relu",)),
                   methods({"none": (), "gp": rhos}), common.seed_axis(scale))
    synthetic = product(common.norm_axis(scale, (False,)),
                        common.synthetic_nme(common.SYNTHETIC_BETAS),
                        methods({"gp": rhos}), common.seed_axis(scale))
    return relu + synthetic


def get_config(arg: str = "imagenet"):
    return experiment_config(base, grid, SCALES, arg)
