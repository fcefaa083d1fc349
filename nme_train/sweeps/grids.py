"""Experiment grids: one config file describes a base config and the points it sweeps.

A paper experiment (configs/paper/eN.py) defines

    SCALES = ("cifar10", ...)               # the base configs it can run on
    def base(scale) -> ConfigDict           # the recipe at that scale
    def grid(scale) -> list[Point]          # the points it sweeps there
    def get_config(arg=DEFAULT): return experiment_config(base, grid, SCALES, arg)

and `arg` is either a scale ("cifar10": the base config) or "scale/point"
("cifar10/method=gp,activation=gelu,rho=0.1,seed=0": that point's config).
So every point is reproducible from its config string alone:

    python -m nme_train.main --config=configs/paper/e1.py:study/method=gp,...

`nme-sweep` expands a grid into one run per point (its own workdir,
named after the point) and `nme-summarize` gathers their results; the
point's tags are written to `DIR/point.json` by the sweep.

A `Point` holds `tags` (what the results are grouped and plotted by: method,
activation, rho, seed, ...) and `overrides` (config field path -> value).
Helpers build the usual axes: `product`, `seeds`, and `regularizer_entry`
for the regularizers of the paper with its hyperparameter conventions.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections

from nme_train.config_fields import set_fields

POINT_FILE = "point.json"  # written by nme-sweep: the point's tags and config string

_NAME_OK = re.compile(r"^[A-Za-z0-9_.=,+-]+$")


def format_value(value: Any) -> str:
    """A tag value as it appears in a point name: short and stable (floats by %g)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep: tags (for naming and grouping) and config overrides."""

    tags: tuple[tuple[str, Any], ...]
    overrides: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def of(tags: dict[str, Any], overrides: dict[str, Any] | None = None) -> Point:
        return Point(tuple(tags.items()), tuple((overrides or {}).items()))

    @property
    def tag_dict(self) -> dict[str, Any]:
        return dict(self.tags)

    @property
    def name(self) -> str:
        name = ",".join(f"{k}={format_value(v)}" for k, v in self.tags)
        if not _NAME_OK.match(name):
            raise ValueError(f"point name {name!r} has characters that do not belong in a "
                             "directory name; use letters, digits and _ . + - in tags")
        return name

    def __add__(self, other: Point) -> Point:
        clash = set(dict(self.tags)) & set(dict(other.tags))
        if clash:
            raise ValueError(f"points combined twice on the tags {sorted(clash)}")
        return Point(self.tags + other.tags, self.overrides + other.overrides)


def product(*axes: Sequence[Point]) -> list[Point]:
    """Every combination of one point from each axis (tags and overrides merged)."""
    out = []
    for combo in itertools.product(*axes):
        point = Point(())
        for p in combo:
            point = point + p
        out.append(point)
    return out


def axis(tag: str, field: str, values: Iterable[Any]) -> list[Point]:
    """Points setting config `field` to each value, tagged `tag=value`."""
    return [Point.of({tag: v}, {field: v}) for v in values]


def seeds(values: Iterable[int]) -> list[Point]:
    return axis("seed", "seed", values)


def activations(names: Iterable[str], beta: float | None = None) -> list[Point]:
    out = []
    for name in names:
        overrides: dict[str, Any] = {"model.activation": name}
        if beta is not None:
            overrides["model.beta"] = beta
        out.append(Point.of({"activation": name}, overrides))
    return out


# The regularizers of the paper under the hyperparameter names of its plots:
# rho for SAM and the gradient penalty, sigma^2 for weight noise and the trace
# penalties (Bishop: E L(theta + eps) ~ L + (sigma^2 / 2) Tr H, so the trace
# penalties get coef = sigma^2 / 2 and weight noise gets sigma = sqrt(sigma^2)).
METHODS = {
    "none": (None, lambda h, **kw: None),
    "sam": ("rho", lambda h, **kw: ("sam", {"rho": h, **kw})),
    "gp": ("rho", lambda h, **kw: ("gradient_penalty", {"rho": h, **kw})),
    "gp_no_nme": ("rho", lambda h, **kw: ("gradient_penalty", {"rho": h, "nme": False, **kw})),
    # the penalty whose update keeps one source of the NME: the activations' sigma''
    # (G + NME_act) or the rest (G + NME_rest, the penalty on the sigma''-ablated network)
    "gp_nme_act": ("rho", lambda h, **kw: ("gradient_penalty",
                                            {"rho": h, "update": "G+NME_act", **kw})),
    "gp_nme_rest": ("rho", lambda h, **kw: ("gradient_penalty",
                                             {"rho": h, "update": "G+NME_rest", **kw})),
    "weight_noise": ("sigma2", lambda h, **kw: ("weight_noise", {"sigma": math.sqrt(h), **kw})),
    "hessian_trace": ("sigma2", lambda h, **kw: ("hessian_trace_penalty",
                                                  {"coef": h / 2, **kw})),
    # the Gauss-Newton trace penalty with the unbiased-gradient estimator (the default) and
    # with the paper's sampled labels, whose gradient drops a score-function term
    "gn_trace": ("sigma2", lambda h, **kw: ("gauss_newton_trace_penalty",
                                             {"coef": h / 2, "estimator": "hutchinson", **kw})),
    "gn_trace_sampled": ("sigma2", lambda h, **kw: ("gauss_newton_trace_penalty",
                                                     {"coef": h / 2,
                                                      "estimator": "sampled_labels", **kw})),
}


def regularizer_entry(method: str, value: float | None, **kwargs: Any) -> tuple:
    """config.regularizers for `method` at hyperparameter `value` (see METHODS)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    entry = METHODS[method][1](value, **kwargs)
    return () if entry is None else (entry,)


# Each method at a typical setting (in METHODS' conventions), and the gradient penalty by
# double backprop: the rows of tools/bench_regularizers.py and tools/bench_throughput.py.
TYPICAL_METHODS = {
    "plain": (),
    "weight_noise": regularizer_entry("weight_noise", 1e-4),  # sigma 0.01
    "sam": regularizer_entry("sam", 0.05),
    "gradient_penalty": regularizer_entry("gp", 0.1),
    "gradient_penalty_no_nme": regularizer_entry("gp_no_nme", 0.1),
    "gradient_penalty_double_backprop": regularizer_entry("gp", 0.1, mode="double_backprop"),
    "gn_trace_sampled_labels": regularizer_entry("gn_trace_sampled", 0.02),  # coef 0.01
    "gn_trace_hutchinson": regularizer_entry("gn_trace", 0.02),
    "hessian_trace": regularizer_entry("hessian_trace", 0.02),
}


def methods(spec: dict[str, Sequence[float]],
            options: dict[str, dict[str, Any]] | None = None,
            zero_name: str | None = None) -> list[Point]:
    """Points for {method: hyperparameter values}; "none" takes no values.

    `options` gives further arguments per method, e.g.
    {"hessian_trace": {"num_probes": 5}}.

    Tags: method and its hyperparameter (rho or sigma2); the unregularized
    point is tagged with the hyperparameter 0 of the first method listed (or
    `zero_name`), so that it sits at the origin of the
    accuracy-vs-hyperparameter plot.
    """
    hyper_names = [METHODS[m][0] for m in spec if METHODS[m][0]]
    zero_name = zero_name or (hyper_names[0] if hyper_names else "rho")
    out = []
    for method, values in spec.items():
        hyper = METHODS[method][0]
        if hyper is None:
            out.append(Point.of({"method": method, zero_name: 0.0}, {"regularizers": ()}))
            continue
        for v in values:
            out.append(Point.of({"method": method, hyper: float(v)},
                                {"regularizers": regularizer_entry(
                                    method, float(v), **(options or {}).get(method, {}))}))
    return out


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[tuple[str, Any]]) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted `field` paths set; unknown fields are a KeyError."""
    return set_fields(ml_collections.ConfigDict(config.to_dict()), overrides)


def experiment_config(base: Callable[[str], ml_collections.ConfigDict],
                      grid: Callable[[str], list[Point]], scales: Sequence[str],
                      arg: str) -> ml_collections.ConfigDict:
    """The config of `arg`: "scale" (the base) or "scale/point-name" (one point)."""
    scale, _, name = arg.partition("/")
    if scale not in scales:
        raise ValueError(f"unknown scale {scale!r}; this experiment runs at {tuple(scales)} "
                         "(config string `file.py:SCALE` or `file.py:SCALE/POINT`)")
    config = base(scale)
    if not name:
        return config
    points = {p.name: p for p in grid(scale)}
    if name not in points:
        listing = "\n  ".join(list(points)[:10])
        raise ValueError(f"no point {name!r} in the {scale} grid; its points are (first "
                         f"10 of {len(points)}):\n  {listing}")
    return apply_overrides(config, points[name].overrides)


def check_grid(points: Sequence[Point]) -> None:
    """Raises ValueError when two points share a name (they would share a workdir)."""
    names = [p.name for p in points]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"the grid names {len(duplicates)} point(s) twice: {duplicates[:5]}")
