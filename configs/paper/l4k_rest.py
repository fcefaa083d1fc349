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

E8 and E9 in this regime: configs/paper/l4k_beta.py.

    nme-sweep --config configs/paper/l4k_rest.py:trace_bracket \
        --workdir study/l4k_rest --jobs 2
    nme-summarize study/l4k_rest --out docs/results/l4k_rest
"""

from configs.paper import common, regime
from nme_train.sweeps.grids import Point, activations, experiment_config, methods, product, seeds

SCALES = ("trace_bracket",)
TRACE_BRACKET = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
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
    arms = trace_arms(lambda m, p: TRACE_BRACKET)
    return product(activations(("gelu",)), plain + arms, seeds((0,)))


def get_config(arg: str = "trace_bracket"):
    return experiment_config(base, grid, SCALES, arg)
