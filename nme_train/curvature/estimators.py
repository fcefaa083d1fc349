"""Stochastic estimates built on the operators: traces, spectral densities, alignment.

hutchinson_quadratic_forms  v^T M v for Rademacher probes v drawn from a key:
    called for H, G and the NME with one key, every kind sees the SAME
    probes, so tr H = tr G + tr NME holds probe by probe (up to round-off);
    the trace is their mean, with a standard error.
    Split by parameter leaf l, v_l^T (M v)_l has mean tr(M_ll), the trace of
    the diagonal block of that leaf (`leafwise_dots`): per-layer traces from
    the same matvecs, at no extra cost (their variance includes the
    off-diagonal blocks M_lm, m != l).
slq  stochastic Lanczos quadrature: for each random start vector, a Lanczos
    run gives Gauss quadrature nodes (Ritz values) and weights (squared first
    components of T's eigenvectors); their average over start vectors is an
    estimate of the spectral density (1/P) sum_i delta(lambda - lambda_i),
    smoothed here with a Gaussian kernel on a grid.
alignment  g^T M g / ||g||^2 for the gradient g over the probe batches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from nme_train.curvature.lanczos import LanczosResult, apply, as_partial

Params = Any


# Independent +-1 entries shaped (and typed) like a tree, one key per leaf (the probes
# of every Hutchinson estimate and the start vectors of Lanczos).
rademacher_like = functools.partial(otu.tree_random_like, sampler=jax.random.rademacher)


def leaf_paths(tree: Params) -> list[str]:
    """Names of the leaves of `tree` in flattening order, e.g. "Conv_0/kernel"."""
    def name(key) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return ["/".join(name(k) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def leafwise_dots(a: Params, b: Params) -> jax.Array:
    """[number of leaves]: <a_l, b_l> for each leaf l; their sum is otu.tree_vdot(a, b)."""
    return jnp.stack([jnp.vdot(x, y).real.astype(jnp.promote_types(x.dtype, jnp.float32))
                      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))])


_draw = jax.jit(rademacher_like)
_leafwise_dots = jax.jit(leafwise_dots)


def hutchinson_quadratic_forms(linear: Any, params: Params, key: jax.Array, num_probes: int,
                               random_vector: Callable[[jax.Array], Params] | None = None
                               ) -> np.ndarray:
    """[num_probes, leaves] float64: v_l^T (M v)_l for probe v = rademacher(fold_in(key, j)).

    `linear` is the operator M: a plain matvec function v -> M v, or a
    `jax.tree_util.Partial` (`Curvature.linear_operator`, whose compiled
    program is shared by every operator of the same shapes). A row's sum is
    v^T M v, whose mean over rows is tr M; a column's mean is the trace of
    that leaf's diagonal block (leaf_paths order). One matvec per probe,
    driven from Python (a while-loop over ResNet matvecs runs far slower on
    CPU), through the operator's one compiled product (`lanczos.apply`, the
    program the Lanczos figures' products and the alignment use too) and two
    small programs of the parameters' shapes alone: the draw and the dots.
    `random_vector(key)` draws a probe (default: rademacher_like(key, params);
    the probes pass theirs, laid out as the parameters).
    """
    linear = as_partial(linear, "hutchinson_quadratic_forms")
    draw = random_vector or (lambda k: _draw(k, params))
    rows = []
    for j in range(num_probes):
        v = draw(jax.random.fold_in(key, j))
        rows.append(np.asarray(_leafwise_dots(v, apply(linear, v)), np.float64))
    return np.stack(rows) if rows else np.zeros((0, len(jax.tree.leaves(params))))


def mean_and_standard_error(samples: np.ndarray) -> tuple[float, float]:
    samples = np.asarray(samples, np.float64)
    if samples.size < 2:
        return float(samples.mean()), float("nan")
    return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(samples.size))


def slq_nodes_and_weights(runs: Sequence[LanczosResult]) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes and weights of all runs, the weights summing to 1 overall."""
    nodes, weights = zip(*(r.quadrature() for r in runs))
    return np.concatenate(nodes), np.concatenate(weights) / len(runs)


def spectral_density(nodes: np.ndarray, weights: np.ndarray, num_points: int = 200,
                     bandwidth: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density): the quadrature measure smoothed by a Gaussian.

    The kernel's width is `bandwidth` times the span of the nodes; the grid
    extends 5 widths beyond the extreme nodes, and the density integrates
    to (about) 1 over it.
    """
    lo, hi = float(np.min(nodes)), float(np.max(nodes))
    sigma = max(bandwidth * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
    kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)
    density = kernel @ weights / (sigma * np.sqrt(2 * np.pi))
    return grid, density
