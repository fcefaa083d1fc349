"""The probe suite: what the trainer and nme-probe compute at a checkpoint.

`ProbeSuite(curvature, settings, param_shardings)` builds each configured
operator kind in turn (nme_train.curvature.operators.OPERATORS), runs the
enabled figures on it (nme_train.curvature.figures.FIGURES: one compiled
program per piece, reused across probes) and `run(params, batches, step)`
returns one JSON-able record; with the built-in figures:

  step, loss, grad_norm, seconds, matvecs,
  <kind>/top_eigenvalues, <kind>/top_error_bounds,
  <kind>/bottom_eigenvalues, <kind>/bottom_error_bounds, <kind>/lanczos_steps,
  <kind>/lanczos = {"alphas": [...], "betas": [...]}
                                         (the tridiagonal T; its first m rows
                                          are an m-step run's, so convergence
                                          against m reads off one record),
  <kind>/trace, <kind>/trace_se, trace/identity_residual,
  <kind>/trace_by_layer, <kind>/trace_by_layer_se
                                         ({parameter path: tr(M_ll)}, the traces
                                          of the diagonal blocks of each leaf, from
                                          the same probes: they sum to the trace),
  <kind>/alignment, <kind>/grad_product_norm
                                         (g^T M g / ||g||^2 and ||M g^||),
  nme_split/*                            (with the NME's parts: nme_activation,
                                          nme_rest, nme_normalization, nme_between:
                                          each part's share of ||NME g^||, of its
                                          square, of g^T NME g^ and of tr NME),
  <kind>/density = {"grid": [...], "density": [...]},
  basis_mib, basis_memory                (the Lanczos basis, and where it lives),

for each kind of `probes.kinds` (hessian, gauss_newton, nme, fisher). Error bounds are the Ritz
residuals |beta_m y_m|. Every process runs the same programs on the
globally sharded parameters and batches; the caller writes the record from
process 0 only.

Inside the probes, matrix products run at full float32 precision
(`precision="highest"`): on GPUs and TPUs the default lets XLA use bf16 or
TF32 passes, whose error (see tools/check_numerics.py) is far above what
Lanczos resolves.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from nme_train.curvature.estimators import rademacher_like
from nme_train.curvature.figures import ProbeContext, enabled_figures
from nme_train.curvature.lanczos import LanczosResult, apply, lanczos_host, lanczos_iterate
from nme_train.curvature.operators import KINDS, OPERATORS, Curvature, check_deterministic

BASIS_MEMORY = ("auto", "device", "host")
PRECISIONS = ("default", "high", "highest")  # jax.default_matmul_precision


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """What a probe computes (the fields of `config.probes`, see base_config.py)."""

    kinds: tuple[str, ...] = KINDS
    lanczos_steps: int = 20
    top_k: int = 5
    bottom_k: int = 5
    trace_probes: int = 10
    density_runs: int = 0
    density_steps: int = 30
    alignment: bool = True
    seed: int = 0
    linearize: bool = True
    basis_memory: str = "auto"
    max_basis_mib: float = 2048.0
    precision: str = "highest"
    check_determinism: bool = True

    @classmethod
    def from_config(cls, probes: Any) -> ProbeSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(probes).items() if k in names}
        if "kinds" in values:
            values["kinds"] = tuple(values["kinds"])
        return cls(**values)

    def basis_placement(self, params: Any, steps: int | None = None) -> tuple[str, float]:
        """Where a basis of `steps` (default: lanczos_steps) Lanczos vectors shaped like
        `params` lives ('device' or 'host', as basis_memory decides), and its MiB."""
        mib = basis_bytes(params, self.lanczos_steps if steps is None else steps) / 2**20
        where = self.basis_memory
        if where == "auto":
            where = "device" if mib <= self.max_basis_mib else "host"
        return where, mib

    def matvecs_per_kind(self) -> int:
        """Operator-vector products one probe makes for each kind of operator."""
        return 2 * self.check_determinism + sum(
            f.matvecs(self) for f in enabled_figures(self, "operator"))


def basis_bytes(params: Any, steps: int) -> int:
    """Bytes of a Lanczos basis of `steps` + 1 vectors shaped like `params`."""
    return (steps + 1) * sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


class ProbeSuite:
    """Compiled curvature probes for one model, parameter layout and batch shapes."""

    def __init__(self, curvature: Curvature, settings: ProbeSettings,
                 param_shardings: Any = None):
        self.curv = curvature
        self.s = settings
        self.shardings = param_shardings
        curv = curvature
        if settings.linearize:  # a Partial holding the residuals, reused by every matvec
            self._build = jax.jit(curv.linear_operator, static_argnums=0)
        else:  # a Partial holding only params and batches: each matvec redoes the passes
            self._build = jax.jit(lambda kind, p, bs: jax.tree_util.Partial(
                lambda p, bs, v: curv.operator(kind, p, bs, linearize=False)(v), p, bs),
                static_argnums=0)
        # the gradient and the random start vectors laid out as the parameters: one compiled
        # product serves them all (a vector left on one device, or replicated, would be
        # resharded and compile the product again), and no device holds a whole vector
        # that the parameters shard
        def as_params(tree):
            return tree if param_shardings is None else \
                jax.lax.with_sharding_constraint(tree, param_shardings)

        def gradient(p, bs):
            loss, grad = jax.value_and_grad(curv.loss_value)(p, bs)
            return loss, as_params(grad)

        self.gradient = jax.jit(gradient)
        self.random_vector = jax.jit(lambda key, p: as_params(rademacher_like(key, p)))

    def _lanczos(self, linear: Any, v0: Any, steps: int, where: str) -> LanczosResult:
        if where == "device":
            return lanczos_iterate(linear, v0, steps, self.shardings)
        shardings = self.shardings or jax.tree.map(lambda x: x.sharding, v0)
        return lanczos_host(lambda u: apply(linear, u), v0, steps, shardings)

    def run(self, params: Any, batches: Sequence[dict], step: int) -> dict:
        """All configured probes at `params` over `batches`; a JSON-able record."""
        s = self.s
        started = time.perf_counter()
        where, mib = s.basis_placement(params)
        record: dict[str, Any] = {"step": int(step), "basis_mib": mib, "basis_memory": where}
        density_where = s.basis_placement(params, s.density_steps)[0]
        if s.density_runs > 0:
            record["density_basis_memory"] = density_where
        key = jax.random.PRNGKey(s.seed)
        gradient = functools.cache(lambda: self.gradient(params, batches))
        ctx = ProbeContext(
            settings=s, params=params, key=key, kinds=s.kinds, record=record,
            lanczos=self._lanczos, random_vector=lambda k: self.random_vector(k, params),
            gradient=gradient, basis_memory=where, density_basis_memory=density_where)
        matvecs = 0
        with jax.default_matmul_precision(s.precision):
            matvecs += self._run_stage(ctx, "before")
            for i, kind in enumerate(s.kinds):
                linear = self._build(kind, params, batches)
                if s.check_determinism:  # a second build of the operator must agree
                    builds = iter([linear, self._build(kind, params, batches)])
                    check_deterministic(lambda u, b=builds: apply(next(b), u),
                                        self.random_vector(jax.random.fold_in(key, 99), params),
                                        f"the {kind} operator")
                    matvecs += 2
                ctx.kind, ctx.index, ctx.linear = kind, i, linear
                matvecs += self._run_stage(ctx, "operator")
                ctx.linear = linear = None  # its residuals are freed before the next kind's
            matvecs += self._run_stage(ctx, "after")
        record["matvecs"] = matvecs
        record["seconds"] = time.perf_counter() - started
        return record

    def _run_stage(self, ctx: ProbeContext, stage: str) -> int:
        """Runs the enabled figures of `stage` into ctx.record; returns their matvecs."""
        prefix = f"{ctx.kind}/" if stage == "operator" else ""
        matvecs = 0
        for figure in enabled_figures(self.s, stage):
            ctx.record.update({prefix + k: v for k, v in figure.compute(ctx).items()})
            matvecs += figure.matvecs(self.s)
        return matvecs


def scalars(record: dict) -> dict[str, float]:
    """The record's scalar figures, flattened for TensorBoard.

    Numbers as `probes/<key>`; every entry of a list (`probes/hessian/
    top_eigenvalues/0`, `/1`, ...); every entry of a dict of numbers (the
    per-layer traces); and each trace's one-standard-error band
    (`probes/<kind>/trace_lo`, `_hi`), which TensorBoard's custom-scalars
    layout draws as a margin around the trace.
    """
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                out[f"probes/{key}"] = float(value)
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            out.update({f"probes/{key}/{i}": float(v) for i, v in enumerate(value)})
        elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            out.update({f"probes/{key}/{k}": float(v) for k, v in value.items()})
    for kind in record_kinds(record):
        if f"{kind}/trace" in record and f"{kind}/trace_se" in record:
            trace, se = record[f"{kind}/trace"], record[f"{kind}/trace_se"]
            out[f"probes/{kind}/trace_lo"], out[f"probes/{kind}/trace_hi"] = trace - se, trace + se
    return out


def record_kinds(record: dict) -> list[str]:
    """The operator kinds a record holds figures of, in registration order."""
    heads = {key.split("/", 1)[0] for key in record if "/" in key}
    return [kind for kind in OPERATORS if kind in heads]


def densities(record: dict) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`probes/<kind>/density` -> (grid, probability mass of each grid cell, the cells' right
    edges) of the record's SLQ densities."""
    out = {}
    for kind in record_kinds(record):
        if f"{kind}/density" in record:
            grid = np.asarray(record[f"{kind}/density"]["grid"], np.float64)
            density = np.asarray(record[f"{kind}/density"]["density"], np.float64)
            width = np.gradient(grid) if len(grid) > 1 else np.ones_like(grid)
            out[f"probes/{kind}/density"] = (grid, density * width, grid + width / 2)
    return out
