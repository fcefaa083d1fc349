"""E4: weight noise, Hessian and Gauss-Newton trace penalties; accuracy against sigma^2.

Paper's finding: the Gauss-Newton trace penalty L + (sigma^2/2) Tr G is
best; the two whose update includes the NME (weight noise, whose expected
loss is L + (sigma^2/2) Tr H to second order, and the Hessian trace
penalty) are worse.

Hyperparameters follow Bishop's expansion: weight noise N(0, sigma^2 I);
trace penalties with coefficient sigma^2/2, one Hutchinson probe (Hessian)
and one draw (Gauss-Newton), as in the paper. The Gauss-Newton penalty runs
with both estimators: `gn_trace` (Hutchinson, whose gradient is unbiased
for grad Tr G) and `gn_trace_sampled` (the paper's sampled labels, whose
gradient drops a score-function term). Activation: GELU (the paper does
not say; with GELU the NME terms of the activations exist). Every run also
records Tr H, Tr G and Tr NME, in all and per parameter leaf, about 10
times over training (the probes of E6, which shares these runs). The study
runs the CNN without BatchNorm (its NME is then the activations' alone).

Grid: {none, weight noise, Hessian trace, GN trace x 2 estimators} x
sigma^2 x seeds.
"""

from configs.paper import common
from nme_train.sweeps.grids import activations, experiment_config, methods, product

SCALES = common.SCALES
PLOT = {"kind": "final", "x": "sigma2", "lines": ("method",), "log_x": True, "zoom": 6,
        "contrasts": [["method", "gn_trace", "gn_trace_sampled"],
                      ["method", "gn_trace", "weight_noise"],
                      ["method", "gn_trace", "hessian_trace"]]}


def base(scale: str):
    return common.with_trace_probes(common.base(scale), per_run=common.study(scale, 10, 5),
                                    trace_probes=common.study(scale, 10, 20))


def grid(scale: str):
    sigma2s = common.study(scale, common.SIGMA2S, common.STUDY_SIGMA2S)
    return product(common.norm_axis(scale, (False,)), activations(("gelu",)),
                   methods({"none": (), "weight_noise": sigma2s, "hessian_trace": sigma2s,
                            "gn_trace": sigma2s, "gn_trace_sampled": sigma2s}),
                   common.seed_axis(scale))


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
