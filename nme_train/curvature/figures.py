"""The figures of a curvature probe: small functions the probe suite runs in order.

A `Figure` computes named values from the operators of one probe. Those of
stage "operator" run once per operator kind (H, G, the NME, the Fisher, ...)
with that operator in `ctx.linear`, and their keys are written under the
kind (`hessian/trace`); those of stage "before" run once before the
operators and those of stage "after" once after them, with every earlier
value in `ctx.record`. Each figure states its cost in operator-vector
products, so the dry run and the benchmarks price a probe from the list.

The trainer, nme-probe, the dry run, TensorBoard and
nme-plot-curvature all iterate over `FIGURES` and `OPERATORS`; adding a
figure is one function here (or in a user's module) passed to
`register_figure`:

    def spectral_gap(ctx):  # needs the Lanczos figure's values of this kind
        top = ctx.record[f"{ctx.kind}/top_eigenvalues"]
        return {"spectral_gap": top[0] - top[1]} if len(top) > 1 else {}

    register_figure(Figure("spectral_gap", "operator", spectral_gap,
                           enabled=lambda s: s.lanczos_steps > 0 and s.top_k > 1))

The figures of the decomposition (docs/curvature.md): extreme eigenvalues with error
bounds (Lanczos), traces with a standard error and per parameter leaf
(Hutchinson, the same probe vectors for every kind), the gradient's
alignment g^T M g / ||g||^2, spectral densities (SLQ), and the check that
the traces of H, G and the NME add up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax.tree_utils as otu

from nme_train.curvature.estimators import (
    hutchinson_quadratic_forms,
    leaf_paths,
    mean_and_standard_error,
    slq_nodes_and_weights,
    spectral_density,
)
from nme_train.curvature.lanczos import LanczosResult, apply
from nme_train.registry import Registry

STAGES = ("before", "operator", "after")


@dataclasses.dataclass
class ProbeContext:
    """What a figure sees: the settings, the parameters, the operator of its kind, the
    record so far, and the suite's shared tools (Lanczos, random vectors, the gradient)."""

    settings: Any  # ProbeSettings
    params: Any
    key: jax.Array  # the probe's key; figures fold in their own constants
    kinds: tuple[str, ...]
    record: dict[str, Any]  # every value written so far (keys as in the final record)
    lanczos: Callable[[Any, Any, int, str], LanczosResult]  # (linear, v0, steps, where)
    random_vector: Callable[[jax.Array], Any]  # key -> Rademacher vector shaped like params
    gradient: Callable[[], tuple[float, Any]]  # () -> (loss, gradient) over the probe batches
    basis_memory: str  # where a lanczos_steps basis lives: "device" | "host"
    density_basis_memory: str  # likewise for density_steps
    stash: dict[str, Any] = dataclasses.field(default_factory=dict)  # between figures, unwritten
    kind: str = ""  # stage "operator": the current kind, its index in `kinds`, its operator
    index: int = 0
    linear: Any = None


@dataclasses.dataclass(frozen=True)
class Figure:
    """A named step of the probe: `compute(ctx) -> {key: JSON-able value}`."""

    name: str
    stage: str  # one of STAGES
    compute: Callable[[ProbeContext], dict[str, Any]]
    enabled: Callable[[Any], bool] = lambda settings: True
    matvecs: Callable[[Any], int] = lambda settings: 0  # per operator kind for stage "operator"


FIGURES: Registry[Figure] = Registry("probe figure")


def register_figure(figure: Figure, after: str | None = None, replace: bool = False) -> Figure:
    """Adds `figure` to the probe (at the end, or right after the figure named `after`)."""
    if figure.stage not in STAGES:
        raise ValueError(f"figure {figure.name!r}: stage {figure.stage!r} is not one of "
                         f"{STAGES}")
    return FIGURES.register(figure.name, figure, after=after, replace=replace)


def enabled_figures(settings: Any, stage: str | None = None) -> list[Figure]:
    """The figures `settings` turn on, in order (of one stage, or all)."""
    return [f for f in FIGURES.values() if f.enabled(settings) and stage in (None, f.stage)]


# -- the figures ---------------------------------------------------------------

def gradient_figure(ctx: ProbeContext) -> dict[str, Any]:
    """The loss and gradient norm over the probe batches (what alignment divides by)."""
    loss, grad = ctx.gradient()
    return {"loss": float(loss), "grad_norm": float(_tree_norm(grad))}


def lanczos_figure(ctx: ProbeContext) -> dict[str, Any]:
    """top_k / bottom_k Ritz values with their error bounds, and the tridiagonal T (its
    first m rows are an m-step run's, so convergence against m reads off one record)."""
    s = ctx.settings
    v0 = ctx.random_vector(jax.random.fold_in(ctx.key, ctx.index))
    result = ctx.lanczos(ctx.linear, v0, s.lanczos_steps, ctx.basis_memory)
    top, top_err = result.top(s.top_k)
    bottom, bottom_err = result.bottom(s.bottom_k)
    return {"top_eigenvalues": top.tolist(), "top_error_bounds": top_err.tolist(),
            "bottom_eigenvalues": bottom.tolist(), "bottom_error_bounds": bottom_err.tolist(),
            "lanczos_steps": result.steps,
            "lanczos": {"alphas": result.alphas[:result.steps].tolist(),
                        "betas": result.betas[:result.steps].tolist()}}


def trace_figure(ctx: ProbeContext) -> dict[str, Any]:
    """Hutchinson trace with its standard error, and the trace of each parameter leaf's
    diagonal block from the same probes. One key for every kind: H, G and the NME see
    the same probe vectors, so tr H = tr G + tr NME holds probe by probe."""
    forms = hutchinson_quadratic_forms(ctx.linear, ctx.params, jax.random.fold_in(ctx.key, 1000),
                                       ctx.settings.trace_probes, ctx.random_vector)
    ctx.stash.setdefault("trace_forms", {})[ctx.kind] = forms
    paths = leaf_paths(ctx.params)
    by_leaf = [mean_and_standard_error(forms[:, leaf]) for leaf in range(len(paths))]
    trace, se = mean_and_standard_error(forms.sum(axis=-1))
    return {"trace": trace, "trace_se": se,
            "trace_by_layer": dict(zip(paths, (m for m, _ in by_leaf))),
            "trace_by_layer_se": dict(zip(paths, (e for _, e in by_leaf)))}


def alignment_figure(ctx: ProbeContext) -> dict[str, Any]:
    """g^T M g / ||g||^2 and ||M g|| / ||g|| for the gradient g over the probe batches: the
    operator along the gradient direction g^ (what the gradient penalty's update adds,
    rho M g^, has norm rho ||M g^||)."""
    _, grad = ctx.gradient()
    grad_sq, along, norm = map(float, _alignment_terms(grad, apply(ctx.linear, grad)))
    grad_sq = max(grad_sq, 1e-300)
    return {"alignment": along / grad_sq, "grad_product_norm": norm / grad_sq ** 0.5}


# one program each (eagerly, every leaf's shape would compile its own vdot, sum and norm)
_tree_norm = jax.jit(otu.tree_norm)


@jax.jit
def _alignment_terms(grad, product):
    return otu.tree_vdot(grad, grad), otu.tree_vdot(grad, product), otu.tree_norm(product)


def density_figure(ctx: ProbeContext) -> dict[str, Any]:
    """Spectral density by stochastic Lanczos quadrature over density_runs start vectors."""
    s = ctx.settings
    runs = [ctx.lanczos(ctx.linear, ctx.random_vector(
        jax.random.fold_in(ctx.key, 2000 + 100 * ctx.index + r)), s.density_steps,
        ctx.density_basis_memory) for r in range(s.density_runs)]
    grid, density = spectral_density(*slq_nodes_and_weights(runs))
    return {"density": {"grid": grid.tolist(), "density": density.tolist()}}


DECOMPOSITION = ("hessian", "gauss_newton", "nme")  # H = G + NME (docs/curvature.md)


def identity_residual_figure(ctx: ProbeContext) -> dict[str, Any]:
    """max_j |v_j^T (H - G - NME) v_j| / max_j |v_j^T H v_j| over the shared trace probes:
    round-off when the three operators are consistent."""
    forms = ctx.stash.get("trace_forms", {})
    if not set(DECOMPOSITION) <= set(forms):
        return {}
    h, g, n = (forms[k].sum(axis=-1) for k in DECOMPOSITION)
    return {"trace/identity_residual": float(np.max(np.abs(h - g - n))
                                             / max(np.max(np.abs(h)), 1e-30))}


# NME = NME_act + NME_rest, NME_rest = NME_norm + NME_between (docs/curvature.md)
NME_PARTS = {"nme_activation": "activation", "nme_rest": "rest",
             "nme_normalization": "normalization", "nme_between": "between"}
NME_SPLITS = (("nme", ("nme_activation", "nme_rest")),
              ("nme", ("nme_activation", "nme_normalization", "nme_between")),
              ("nme_rest", ("nme_normalization", "nme_between")))


def nme_split_figure(ctx: ProbeContext) -> dict[str, Any]:
    """The NME by its source, along the gradient and in trace: each part's share of
    ||NME g^|| (norms: the parts can cancel, so the shares need not sum to 1), of
    ||NME g^||^2 (its squared norm, the part's own ||M g^||^2: nearly orthogonal parts add
    up to about 1), of g^T NME g^ (additive), and of tr NME (additive), with
    ||G g^|| / ||NME g^|| beside; and, probe by probe, how exactly the parts sum."""
    r = ctx.record
    out: dict[str, Any] = {}
    norm = r.get("nme/grad_product_norm")
    if norm:
        for part, name in NME_PARTS.items():
            if f"{part}/grad_product_norm" in r:
                out[f"nme_split/{name}_norm_share"] = r[f"{part}/grad_product_norm"] / norm
                out[f"nme_split/{name}_squared_norm_share"] = (
                    r[f"{part}/grad_product_norm"] / norm) ** 2
                out[f"nme_split/{name}_alignment_share"] = (
                    r[f"{part}/alignment"] / r["nme/alignment"] if r["nme/alignment"] else None)
        if "gauss_newton/grad_product_norm" in r:
            out["nme_split/gauss_newton_to_nme_norm"] = r["gauss_newton/grad_product_norm"] / norm
    trace = r.get("nme/trace")
    if trace:
        for part, name in NME_PARTS.items():
            if f"{part}/trace" in r:
                out[f"nme_split/{name}_trace_share"] = r[f"{part}/trace"] / trace
    forms = ctx.stash.get("trace_forms", {})
    residuals = []
    for whole, parts in NME_SPLITS:  # each identity the probed kinds allow, probe by probe
        if {whole, *parts} <= set(forms):
            total = forms[whole].sum(axis=-1)
            gap = total - sum(forms[p].sum(axis=-1) for p in parts)
            residuals.append(float(np.max(np.abs(gap)) / max(np.max(np.abs(total)), 1e-30)))
    if residuals:
        out["nme_split/identity_residual"] = max(residuals)
    return out


for _figure in (
        Figure("gradient", "before", gradient_figure, enabled=lambda s: s.alignment),
        Figure("lanczos", "operator", lanczos_figure, enabled=lambda s: s.lanczos_steps > 0,
               matvecs=lambda s: s.lanczos_steps),
        Figure("trace", "operator", trace_figure, enabled=lambda s: s.trace_probes > 0,
               matvecs=lambda s: s.trace_probes),
        Figure("alignment", "operator", alignment_figure, enabled=lambda s: s.alignment,
               matvecs=lambda s: 1),
        Figure("density", "operator", density_figure, enabled=lambda s: s.density_runs > 0,
               matvecs=lambda s: s.density_runs * s.density_steps),
        Figure("identity_residual", "after", identity_residual_figure,
               enabled=lambda s: s.trace_probes > 0 and set(DECOMPOSITION) <= set(s.kinds)),
        Figure("nme_split", "after", nme_split_figure,
               enabled=lambda s: "nme" in s.kinds and bool(set(NME_PARTS) & set(s.kinds))),
):
    register_figure(_figure)
