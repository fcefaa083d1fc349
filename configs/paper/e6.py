"""E6: Tr H, Tr G and Tr NME over training under each penalty.

Paper's finding: minimising Tr H drives the NME's trace negative and
unstable, while Tr G stays stable under the Gauss-Newton penalty.

The runs are E4's at one sigma^2 (the same base and point names: sweep E4
and E6 into one directory and they run once); the traces come from the
probes each run writes to probes.jsonl (Hutchinson, 10 probes shared by H, G
and NME, on a fixed batch of training examples, BatchNorm in train mode).
"""

from configs.paper import common, e4
from nme_train.experiments import experiment_config, methods, product, seeds

SCALES = common.SCALES
PLOT = {"kind": "traces", "lines": ("method",),
        "y": ("hessian/trace", "gauss_newton/trace", "nme/trace")}
base = e4.base


def grid(scale: str):
    sigma2 = (common.study(scale, 1e-3, 1e-2),)
    return product(methods({"none": (), "weight_noise": sigma2, "hessian_trace": sigma2,
                            "gn_trace": sigma2}), seeds(common.SEEDS))


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
