"""E8 and E9 in the regime the pilot chose (configs/paper/regime.py: `l4k`).

Accuracy against beta of beta-GELU, x Phi(beta x) (beta = 1 is GELU, beta -> inf
tends to ReLU), for plain training, the gradient penalty and the Gauss-Newton trace
penalty (E8), and the fraction of pre-activations with |sigma''| above
probes.sparsity_threshold per layer at the start and the end of training (E9, from the
same runs), in `l4k` (4,000 Fashion-MNIST images, 25% label noise, the BatchNorm CNN,
5-epoch warmup). The penalty runs at GELU's best rho over the contrasts' 8 seeds, the
Gauss-Newton trace penalty at its best sigma^2 in configs/paper/l4k_rest.py's `trace_study`
(both fixed across beta, as the paper fixes its hyperparameter along the beta axis).

    nme-sweep --config configs/paper/l4k_beta.py:beta --workdir study/l4k_beta \
        --jobs 2
    nme-summarize study/l4k_beta --out docs/results/l4k_beta
"""

from configs.paper import common, l4k_rest
from nme_train.sweeps.grids import axis, experiment_config, methods, product, seeds

SCALES = ("beta",)
BETAS = (1.0, 4.0, 16.0, 64.0)
RHO = 0.4  # GELU's penalty at its best over the contrasts' 8 seeds
# The Gauss-Newton trace penalty's best sigma^2 in l4k_rest's `trace_study`: 3e-3 (seeds 0-1:
# 84.88% against 83.17% at 1e-2, the bracket's seed-0 best, which had no 3e-3 point; each seed
# ranks them the same way); checked against all of the study's seeds before this sweep's
# verdicts.
GN_SIGMA2 = 3e-3
SEEDS = (0, 1, 2, 3, 4)
PLOT = {"kind": "final", "x": "beta", "lines": ("method",), "log_x": True,
        "contrasts": [["method", "gp", "none"], ["method", "gn_trace", "none"]]}


def base(scale: str):
    c = l4k_rest.l4k()
    c.model.activation = "beta_gelu"
    return common.with_sparsity_probe(c)


def grid(scale: str):
    betas = axis("beta", "model.beta", BETAS)
    return (product(betas, methods({"none": (), "gp": (RHO,)}), seeds(SEEDS))
            + product(betas, methods({"gn_trace": (GN_SIGMA2,)}), seeds(SEEDS)))


def get_config(arg: str = "beta"):
    return experiment_config(base, grid, SCALES, arg)
