"""E6: Tr H, Tr G and Tr NME over training under each penalty, and where the NME lives.

Paper's finding: minimising Tr H drives the NME's trace negative and
unstable, while Tr G stays stable under the Gauss-Newton penalty.

The penalised runs are E4's at sigma^2 = 1e-3 (the same base and point
names: sweep E4 and E6 into one directory and they run once). At the
study's 1e-2 the Hessian trace penalty diverges within 30 steps, before a
trajectory exists (E4), so E6 follows the strength at which every penalty
trains. Beside them, plain
training of ReLU and GELU with and without BatchNorm (study), whose
per-layer traces (`<kind>/trace_by_layer`) show where the NME lives:
ReLU without BatchNorm is piecewise linear in each layer's weights, so its
diagonal NME blocks, and Tr NME, are zero; BatchNorm's normalisation is not.
The traces come from the probes each run writes to probes.jsonl
(Hutchinson probes shared by H, G and NME, on a fixed batch of training
examples, BatchNorm in train mode).
"""

from configs.paper import common, e4
from nme_train.sweeps.grids import activations, experiment_config, methods, product

SCALES = common.SCALES
PLOT = {"kind": "traces", "lines": ("bn", "activation", "method"),
        "y": ("hessian/trace", "gauss_newton/trace", "nme/trace")}
base = e4.base


def grid(scale: str):
    sigma2 = (1e-3,)
    plain = product(common.norm_axis(scale), activations(("relu", "gelu")),
                    methods({"none": ()}, zero_name="sigma2"), common.seed_axis(scale))
    penalised = product(common.norm_axis(scale, (False,)), activations(("gelu",)),
                        methods({"weight_noise": sigma2, "hessian_trace": sigma2,
                                 "gn_trace": sigma2, "gn_trace_sampled": sigma2}),
                        common.seed_axis(scale))
    return plain + penalised


def get_config(arg: str = "cifar10"):
    return experiment_config(base, grid, SCALES, arg)
