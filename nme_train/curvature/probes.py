"""The probe suite: what the trainer and tools/probe.py compute at a checkpoint.

`ProbeSuite(curvature, settings, param_shardings)` compiles, once, one
program per piece (a Lanczos run per operator, the shared-probe traces, the
gradient alignment, the SLQ runs) and `run(params, batches, step)` returns
one JSON-able record:

  step, loss, grad_norm, seconds, matvecs,
  <kind>/top_eigenvalues, <kind>/top_error_bounds,
  <kind>/bottom_eigenvalues, <kind>/bottom_error_bounds, <kind>/lanczos_steps,
  <kind>/trace, <kind>/trace_se, trace/identity_residual,
  <kind>/alignment                       (g^T M g / ||g||^2),
  <kind>/density = {"grid": [...], "density": [...]},
  basis_mib, basis_memory                (the Lanczos basis, and where it lives),

for kind in hessian, gauss_newton, nme. Error bounds are the Ritz
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
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nme_train.curvature.estimators import (
    hutchinson_quadratic_forms,
    mean_and_standard_error,
    rademacher_like,
    slq_nodes_and_weights,
    spectral_density,
)
from nme_train.curvature.lanczos import LanczosResult, lanczos, lanczos_host
from nme_train.curvature.operators import KINDS, Curvature, check_deterministic
from nme_train.curvature.products import tree_dot

BASIS_MEMORY = ("auto", "device", "host")


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
        s, curv = settings, curvature

        def operator(kind, params, batches):
            return curv.operator(kind, params, batches, linearize=s.linearize)

        self._lanczos = {
            kind: jax.jit(lambda p, bs, v, kind=kind, steps=s.lanczos_steps: lanczos(
                operator(kind, p, bs), v, steps, param_shardings))
            for kind in s.kinds}
        self._density = {
            kind: jax.jit(lambda p, bs, v, kind=kind, steps=s.density_steps: lanczos(
                operator(kind, p, bs), v, steps, param_shardings)[:2])
            for kind in s.kinds}
        self._matvec = {kind: jax.jit(lambda p, bs, v, kind=kind: operator(kind, p, bs)(v))
                        for kind in s.kinds}
        self._traces = jax.jit(lambda p, bs, key: hutchinson_quadratic_forms(
            [operator(kind, p, bs) for kind in s.kinds], p, key, s.trace_probes))

        def alignment(p, bs):
            loss, g = jax.value_and_grad(curv.loss_value)(p, bs)
            forms = jnp.stack([tree_dot(g, operator(kind, p, bs)(g)) for kind in s.kinds])
            sq = tree_dot(g, g)
            return loss, jnp.sqrt(sq), forms / sq

        self._alignment = jax.jit(alignment)
        self._start = jax.jit(rademacher_like)

    def basis_memory(self, params: Any) -> tuple[str, float]:
        mib = basis_bytes(params, self.s.lanczos_steps) / 2**20
        where = self.s.basis_memory
        if where == "auto":
            where = "device" if mib <= self.s.max_basis_mib else "host"
        return where, mib

    def run(self, params: Any, batches: Sequence[dict], step: int) -> dict:
        """All configured probes at `params` over `batches`; a JSON-able record."""
        s = self.s
        started = time.perf_counter()
        where, mib = self.basis_memory(params)
        record: dict[str, Any] = {"step": int(step), "basis_mib": mib, "basis_memory": where}
        matvecs = 0
        key = jax.random.PRNGKey(s.seed)
        with jax.default_matmul_precision(s.precision):
            if s.check_determinism:
                v = self._start(jax.random.fold_in(key, 99), params)
                for kind in s.kinds:
                    check_deterministic(lambda u, kind=kind: self._matvec[kind](params, batches, u),
                                        v, f"the {kind} operator")
                    matvecs += 2
            for i, kind in enumerate(s.kinds):
                if s.lanczos_steps <= 0:
                    break
                v0 = self._start(jax.random.fold_in(key, i), params)
                if where == "device":
                    alphas, betas, _ = self._lanczos[kind](params, batches, v0)
                    result = LanczosResult(jax.device_get(alphas), jax.device_get(betas))
                else:
                    result = lanczos_host(
                        lambda u, kind=kind: self._matvec[kind](params, batches, u), v0,
                        s.lanczos_steps, self.shardings or jax.tree.map(lambda x: x.sharding,
                                                                        params))
                matvecs += s.lanczos_steps
                top, top_err = result.top(s.top_k)
                bottom, bottom_err = result.bottom(s.bottom_k)
                record.update({f"{kind}/top_eigenvalues": top.tolist(),
                               f"{kind}/top_error_bounds": top_err.tolist(),
                               f"{kind}/bottom_eigenvalues": bottom.tolist(),
                               f"{kind}/bottom_error_bounds": bottom_err.tolist(),
                               f"{kind}/lanczos_steps": result.steps})
            if s.trace_probes > 0:
                forms = np.asarray(jax.device_get(
                    self._traces(params, batches, jax.random.fold_in(key, 1000))), np.float64)
                matvecs += forms.size
                for i, kind in enumerate(s.kinds):
                    record[f"{kind}/trace"], record[f"{kind}/trace_se"] = \
                        mean_and_standard_error(forms[:, i])
                if set(KINDS) <= set(s.kinds):
                    h, g, n = (forms[:, s.kinds.index(k)] for k in KINDS)
                    record["trace/identity_residual"] = float(
                        np.max(np.abs(h - g - n)) / max(np.max(np.abs(h)), 1e-30))
            if s.alignment:
                loss, grad_norm, ratios = jax.device_get(self._alignment(params, batches))
                matvecs += len(s.kinds)
                record.update({"loss": float(loss), "grad_norm": float(grad_norm)})
                record.update({f"{kind}/alignment": float(r) for kind, r in zip(s.kinds, ratios)})
            if s.density_runs > 0:
                for i, kind in enumerate(s.kinds):
                    runs = []
                    for r in range(s.density_runs):
                        v0 = self._start(jax.random.fold_in(key, 2000 + 100 * i + r), params)
                        alphas, betas = self._density[kind](params, batches, v0)
                        runs.append(LanczosResult(jax.device_get(alphas), jax.device_get(betas)))
                    matvecs += s.density_runs * s.density_steps
                    grid, density = spectral_density(*slq_nodes_and_weights(runs))
                    record[f"{kind}/density"] = {"grid": grid.tolist(),
                                                 "density": density.tolist()}
        record["matvecs"] = matvecs
        record["seconds"] = time.perf_counter() - started
        return record


def scalars(record: dict) -> dict[str, float]:
    """The record's scalar figures, flattened for TensorBoard (lists: first entry)."""
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[f"probes/{key}"] = float(value)
        elif isinstance(value, list) and value and isinstance(value[0], (int, float)):
            out[f"probes/{key}[0]"] = float(value[0])
        elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            out.update({f"probes/{key}/{k}": float(v) for k, v in value.items()})
    return out


def sparsity_probe(model: Any, activation: Any, threshold: float,
                   train: bool) -> Any:
    """A function (variables, batches) -> {site: fraction of |sigma''(x)| > threshold} (E9).

    `model` is a flax module whose activations go through
    `nme_train.models.layers.activate`; `batches` hold normalised "inputs".
    Sites are named by module path and call index; the fractions are over
    all probe examples. The per-batch program is compiled once.
    """
    from flax import traverse_util

    from nme_train.models.layers import PREACTIVATIONS

    second = jax.vmap(jax.grad(jax.grad(lambda x: activation(x))))
    mutable = [PREACTIVATIONS, "batch_stats"] if train else [PREACTIVATIONS]

    @jax.jit
    def counts(variables, inputs):
        _, state = model.apply(variables, inputs, train=train, mutable=mutable)
        flat = traverse_util.flatten_dict(state[PREACTIVATIONS], sep="/")
        out = {}
        for path, values in flat.items():
            for i, x in enumerate(values):
                d2 = second(x.reshape(-1).astype(jnp.float32))
                out[f"{path}/{i}"] = (jnp.sum(jnp.abs(d2) > threshold), x.size)
        return out

    def probe(variables: dict, batches: Sequence[dict]) -> dict[str, float]:
        totals: dict[str, list[float]] = {}
        for batch in batches:
            for site, (above, size) in jax.device_get(counts(variables,
                                                             batch["inputs"])).items():
                acc = totals.setdefault(site, [0.0, 0.0])
                acc[0] += float(above)
                acc[1] += float(size)
        return {site: above / size for site, (above, size) in sorted(totals.items())}

    return probe
