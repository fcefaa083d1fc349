"""E4, E5 and E6 in the regime the pilot chose (configs/paper/regime.py: `l4k`).

The earlier small-scale study ran these where no regularizer had a benefit to keep
(docs/results.md). Here they run in `l4k` (4,000 Fashion-MNIST images, 25% label noise,
the BatchNorm CNN, 5-epoch warmup; SAM +9 points over plain training), GELU unless the
scale says otherwise, as the contrasts do (configs/paper/contrasts.py).

Scales:

  trace_bracket  E4/E5/E6, seed 0: weight noise, the Hessian trace penalty and the
                 Gauss-Newton trace penalty (Hutchinson, the unbiased estimator), each
                 with 1 and 5 probes (weight noise: 1 draw), over sigma^2 from harmless
                 to failure (TRACE_BRACKET), beside plain training; Tr H, Tr G and
                 Tr NME (and per layer) 6 times over training (E6)
  trace_study    seeds 0-4 of every arm at the sigma^2 around its bracket's best
                 (STUDY_SIGMA2S: the best and its half-decade neighbours; below the
                 bracket's bottom for the Hessian trace penalty, whose best lay there)

E8 and E9 in this regime: configs/paper/l4k_beta.py.

    nme-sweep --config configs/paper/l4k_rest.py:trace_bracket \
        --workdir study/l4k_rest --jobs 2
    nme-sweep --config configs/paper/l4k_rest.py:trace_study \
        --workdir study/l4k_rest --jobs 2
    nme-summarize study/l4k_rest --out docs/results/l4k_rest
"""

from configs.paper import common, regime
from nme_train.sweeps.grids import Point, activations, experiment_config, methods, product, seeds

SCALES = ("trace_bracket", "trace_study")
TRACE_BRACKET = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# The bracket at seed 0 (plain training 73.68%): weight noise peaks at 1e-3 (83.25%; 75.10 at
# 1e-4, 78.61 at 1e-2, chance at 1); the Gauss-Newton trace penalty at 1e-2 (82.70%; 81.48 at
# 1e-3, 62.08 at 1e-1, divergence at 1); the Hessian trace penalty at the bracket's bottom,
# 1e-4 (74.55%; 22.63 at 1e-3, divergence from 1e-1; with 5 probes 74.39, 64.83, 53.24 at
# 1e-4, 1e-3, 1e-2). With 5 probes the Gauss-Newton one also peaks at 1e-2 (83.42%).
STUDY_SIGMA2S = {("weight_noise", 1): (3e-4, 1e-3, 3e-3),
                 ("hessian_trace", 1): (1e-5, 3e-5, 1e-4, 3e-4),
                 ("hessian_trace", 5): (1e-5, 3e-5, 1e-4, 3e-4),
                 ("gn_trace", 1): (3e-3, 1e-2, 3e-2), ("gn_trace", 5): (3e-3, 1e-2, 3e-2)}
STUDY_SEEDS = tuple(range(5))
TRACE_METHODS = ("weight_noise", "hessian_trace", "gn_trace")
FIVE = {"hessian_trace": {"num_probes": 5}, "gn_trace": {"num_samples": 5}}
PLOT = {"kind": "final", "x": "sigma2", "lines": ("method", "probes"), "log_x": True,
        "contrasts": [["method", "gn_trace", "weight_noise"],
                      ["method", "gn_trace", "hessian_trace"],
                      ["probes", 5, 1]],
        "series": ["trace/hessian", "trace/gauss_newton", "trace/nme"]}


def l4k():
    c = regime.base("pilot")
    c.data.augment = "none"
    c.data.label_noise = 0.25
    return c


def base(scale: str):
    c = l4k()
    c.model.activation = "gelu"
    return common.with_trace_probes(c, per_run=6, trace_probes=10)


def trace_arms(sigma2s_of) -> list[Point]:
    """Every trace arm (method, probes) at sigma2s_of(method, probes)."""
    out = []
    for probes in (1, 5):
        for method in TRACE_METHODS:
            if probes == 5 and method not in FIVE:
                continue
            values = sigma2s_of(method, probes)
            out += product(methods({method: values},
                                   options=FIVE if probes == 5 else None),
                           [Point.of({"probes": probes})])
    return out


def grid(scale: str):
    plain = product(methods({"none": ()}, zero_name="sigma2"), [Point.of({"probes": 1})])
    if scale == "trace_study":
        arms = trace_arms(lambda m, p: STUDY_SIGMA2S[(m, p)])
        return product(activations(("gelu",)), plain + arms, seeds(STUDY_SEEDS))
    arms = trace_arms(lambda m, p: TRACE_BRACKET)
    return product(activations(("gelu",)), plain + arms, seeds((0,)))


def get_config(arg: str = "trace_bracket"):
    return experiment_config(base, grid, SCALES, arg)
