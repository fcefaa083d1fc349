"""Lanczos with full reorthogonalisation on parameter pytrees, and its Ritz values.

`lanczos_iterate(linear, v0, num_steps)` is the driver the probes use: one
jitted Lanczos step, called num_steps times, on an operator given as a
`jax.tree_util.Partial` (`Curvature.linear_operator` builds one, its
linearisation done once); the basis is donated from step to step, so it is
updated in place. `lanczos(matvec, v0, num_steps)` runs the same iteration
as one `lax.fori_loop`, to be used inside a jitted function. On CPU, XLA
runs a while-loop body much slower than the same operations outside a loop
(a ResNet's matvec was about 30x slower), hence the stepwise driver.

In both, the basis is a pytree whose
leaves carry a leading axis of num_steps + 1 in front of the parameter's
shape, so a basis vector is sharded exactly like the parameter (pass
`shardings`, the parameters' NamedShardings, to pin that layout inside jit)
and nothing is gathered to one host. Every new vector is orthogonalised
against the whole basis twice (classical Gram-Schmidt, repeated), which
keeps the Ritz values free of the ghost copies plain Lanczos produces.

`lanczos_host` runs the same iteration from Python with the basis kept in
host memory (when the backend has a host memory space; on CPU it is the
same memory), for bases too large for the accelerator: each iteration
streams the stored vectors back for the reorthogonalisation.

`LanczosResult` turns the tridiagonal coefficients into Ritz values with
error bounds: for a Ritz pair (theta, y) of T_m, the residual
||M x - theta x|| = |beta_m y_m| bounds the distance from theta to an
eigenvalue of M. A run stops early (breakdown) when the Krylov space is
invariant; only the steps before it are used.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

Params = Any


@dataclasses.dataclass
class LanczosResult:
    """Tridiagonal coefficients of a Lanczos run (host numpy), and the basis if kept."""

    alphas: np.ndarray  # [m] diagonal of T
    betas: np.ndarray  # [m] betas[i] = norm of the residual after step i
    basis: Any = None  # pytree, leaves [m + 1, ...], when kept

    def __post_init__(self):
        self.alphas = np.asarray(self.alphas, np.float64)
        self.betas = np.asarray(self.betas, np.float64)
        scale = max(np.max(np.abs(self.alphas), initial=0.0),
                    np.max(np.abs(self.betas), initial=0.0), 1e-300)
        small = np.nonzero(self.betas <= 1e-10 * scale)[0]
        self.steps = int(small[0]) + 1 if small.size else len(self.alphas)

    def tridiagonal(self) -> np.ndarray:
        m = self.steps
        t = np.diag(self.alphas[:m])
        off = self.betas[: m - 1]
        return t + np.diag(off, 1) + np.diag(off, -1)

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values ascending, eigenvectors of T as columns, residual bounds)."""
        values, vectors = np.linalg.eigh(self.tridiagonal())
        bounds = np.abs(self.betas[self.steps - 1] * vectors[-1, :])
        return values, vectors, bounds

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k largest Ritz values (descending) and their error bounds."""
        values, _, bounds = self.ritz()
        order = np.argsort(values)[::-1][:k]
        return values[order], bounds[order]

    def bottom(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k smallest Ritz values (ascending) and their error bounds."""
        values, _, bounds = self.ritz()
        order = np.argsort(values)[:k]
        return values[order], bounds[order]

    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """Gauss quadrature nodes and weights of the start vector's spectral measure."""
        values, vectors, _ = self.ritz()
        return values, vectors[0, :] ** 2

    def ritz_vectors(self, which: np.ndarray) -> Any:
        """Ritz vectors (pytree, leaves [len(which), ...]) for eigenvector columns `which`."""
        if self.basis is None:
            raise ValueError("the Lanczos run did not keep its basis (keep_basis=True)")
        _, vectors, _ = self.ritz()
        coeffs = jnp.asarray(vectors[:, which].T)
        m = self.steps
        return jax.tree.map(lambda b: jnp.tensordot(coeffs.astype(b.dtype), b[:m], axes=1),
                            self.basis)


def basis_sharding(shardings: Any) -> Any:
    """Shardings of a stacked basis: the parameters' layouts behind an unsharded axis."""
    return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec)), shardings)


def _project(basis: Any, w: Any) -> jax.Array:
    """[m + 1] coefficients <b_i, w>."""
    parts = [jnp.tensordot(b, x, axes=x.ndim).astype(jnp.float32 if x.dtype != jnp.float64
                                                       else jnp.float64)
             for b, x in zip(jax.tree.leaves(basis), jax.tree.leaves(w))]
    return sum(parts[1:], parts[0])


def _reorthogonalize(basis: Any, w: Any) -> Any:
    for _ in range(2):
        coeffs = _project(basis, w)
        w = jax.tree.map(lambda x, b, c=coeffs: x - jnp.tensordot(c.astype(b.dtype), b, axes=1),
                         w, basis)
    return w


def _start(v0: Params, num_steps: int, shardings: Any) -> tuple[Any, jax.Array, jax.Array]:
    """(basis with v0 / ||v0|| in row 0, zero alphas, zero betas)."""
    if isinstance(shardings, _hashable):
        shardings = shardings.tree
    v0 = otu.tree_scale(1.0 / otu.tree_norm(v0), v0)
    basis = jax.tree.map(lambda x: jnp.zeros((num_steps + 1, *x.shape), x.dtype), v0)
    if shardings is not None:
        basis = jax.lax.with_sharding_constraint(basis, basis_sharding(shardings))
    basis = jax.tree.map(lambda b, x: b.at[0].set(x), basis, v0)
    dtype = jnp.result_type(*[x.dtype for x in jax.tree.leaves(v0)], jnp.float32)
    zeros = jnp.zeros((num_steps,), dtype)
    return basis, zeros, zeros


def _advance(matvec: Callable[[Params], Params], v: Params,
             reorthogonalize: Callable[[Params], Params], scale: jax.Array | float
             ) -> tuple[jax.Array, jax.Array, Params]:
    """One Lanczos step from the unit vector v: (alpha, beta, next unit vector).

    The one home of the iteration, for the device and the host drivers alike.
    `reorthogonalize` removes the basis' components from a vector; `scale`
    is the largest |alpha| so far. On breakdown (beta negligible against
    the alphas) the next vector is zero.
    """
    return _advance_with(matvec(v), v, reorthogonalize, scale)


def _advance_with(w: Params, v: Params, reorthogonalize: Callable[[Params], Params],
                  scale: jax.Array | float) -> tuple[jax.Array, jax.Array, Params]:
    """`_advance` given the product w = M v."""
    alpha = otu.tree_vdot(w, v)
    w = reorthogonalize(w)
    beta = otu.tree_norm(w)
    live = beta > 1e-10 * jnp.maximum(jnp.maximum(scale, jnp.abs(alpha)), 1e-30)
    return alpha, beta, otu.tree_scale(jnp.where(live, 1.0 / jnp.where(live, beta, 1.0), 0.0), w)


def _step(matvec: Callable[[Params], Params], i: jax.Array, basis: Any, alphas: jax.Array,
          betas: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
    """Lanczos step i on a stacked basis: row i + 1 of the basis, alphas[i], betas[i]."""
    return _step_with(matvec(_row(basis, i)), i, basis, alphas, betas)


def _row(basis: Any, i: jax.Array) -> Params:
    return jax.tree.map(lambda b: b[i], basis)


def _step_with(w: Params, i: jax.Array, basis: Any, alphas: jax.Array, betas: jax.Array
               ) -> tuple[Any, jax.Array, jax.Array]:
    """`_step` given the product w = M (row i of the basis)."""
    alpha, beta, w = _advance_with(w, _row(basis, i), functools.partial(_reorthogonalize, basis),
                                   jnp.max(jnp.abs(alphas)))
    basis = jax.tree.map(lambda b, x: b.at[i + 1].set(x), basis, w)
    return basis, alphas.at[i].set(alpha), betas.at[i].set(beta)


def lanczos(matvec: Callable[[Params], Params], v0: Params, num_steps: int,
            shardings: Any = None) -> tuple[jax.Array, jax.Array, Any]:
    """(alphas [m], betas [m], basis) of `num_steps` Lanczos steps from v0; jittable."""
    carry = _start(v0, num_steps, shardings)
    basis, alphas, betas = jax.lax.fori_loop(
        0, num_steps, lambda i, c: _step(matvec, i, *c), carry)
    return alphas, betas, basis


@functools.partial(jax.jit, static_argnums=(1, 2))
def _jit_start(v0, num_steps, shardings):
    return _start(v0, num_steps, shardings)


# The step driven from Python: the operator's product is its own compiled program (shared
# with every other use of the operator: apply), the rest one program of the shapes alone.
_jit_row = jax.jit(_row)


@functools.partial(jax.jit, donate_argnums=(2,))
def _jit_step_with(w, i, basis, alphas, betas):
    return _step_with(w, i, basis, alphas, betas)


@jax.jit
def apply(linear: Any, v: Params) -> Params:
    """linear(v) for a Partial operator (`Curvature.linear_operator`), jitted: one program
    per operator, whichever figure asks for the product."""
    return linear(v)


def _jit_step(linear, i, basis, alphas, betas):
    return _jit_step_with(apply(linear, _jit_row(basis, i)), i, basis, alphas, betas)


def as_partial(linear: Any, caller: str) -> jax.tree_util.Partial:
    """An operator as a pytree that jitted drivers take: a `jax.tree_util.Partial` as it
    is, a plain function v -> M v wrapped (compiled once per function object)."""
    if isinstance(linear, jax.tree_util.Partial):
        return linear
    if callable(linear):
        return jax.tree_util.Partial(linear)
    raise TypeError(f"{caller}: the operator must be a function v -> M v or a "
                    f"jax.tree_util.Partial, not {type(linear).__name__}")


def lanczos_iterate(linear: Any, v0: Params, num_steps: int, shardings: Any = None,
                    keep_basis: bool = False) -> LanczosResult:
    """Lanczos driven step by step; `linear` is a jax.tree_util.Partial (a pytree) operator
    or a plain function v -> M v.

    One compiled step serves every iteration (and every run with the same
    shapes); the basis is updated in place.
    """
    linear = as_partial(linear, "lanczos_iterate")
    basis, alphas, betas = _jit_start(v0, num_steps, _hashable(shardings))
    for i in range(num_steps):
        basis, alphas, betas = _jit_step(linear, jnp.asarray(i, jnp.int32), basis, alphas,
                                         betas)
    return LanczosResult(jax.device_get(alphas), jax.device_get(betas),
                         basis if keep_basis else None)


class _hashable:
    def __init__(self, tree: Any):
        self.tree = tree
        self._key = None if tree is None else tuple(jax.tree.leaves(tree))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _hashable) and self._key == other._key


def host_memory_sharding(sharding: Any) -> Any:
    """`sharding` in the host memory space when the backend has one, else unchanged."""
    try:
        kinds = {m.kind for d in sharding.mesh.devices.flat for m in d.addressable_memories()}
    except (AttributeError, NotImplementedError):  # a backend or jax without memory spaces:
        return sharding  # the basis then stays where the parameters are
    for kind in ("pinned_host", "unpinned_host"):
        if kind in kinds and kind != sharding.memory_kind:
            return sharding.with_memory_kind(kind)
    return sharding


def lanczos_host(matvec: Callable[[Params], Params], v0: Params, num_steps: int,
                 shardings: Any) -> LanczosResult:
    """Lanczos driven from Python with the basis in host memory; same algorithm."""
    host = jax.tree.map(host_memory_sharding, shardings)
    dot = jax.jit(otu.tree_vdot)
    subtract = jax.jit(lambda w, c, b: otu.tree_add_scale(w, -c, b))

    def to_device(x):
        return jax.device_put(x, shardings)

    def reorthogonalize(w):  # streams each stored vector back, twice (as _reorthogonalize)
        for _ in range(2):
            coeffs = [dot(to_device(b), w) for b in basis]
            for c, b in zip(coeffs, basis):
                w = subtract(w, c, to_device(b))
        return w

    v = jax.jit(lambda x: otu.tree_scale(1.0 / otu.tree_norm(x), x))(v0)
    basis = [jax.device_put(v, host)]
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(num_steps):
        alpha, beta, v = _advance(matvec, v, reorthogonalize, max(map(abs, alphas), default=0.0))
        alphas.append(float(alpha))
        betas.append(float(beta))
        if beta <= 1e-10 * max(max(abs(a) for a in alphas), 1e-30):
            break
        basis.append(jax.device_put(v, host))
    return LanczosResult(np.asarray(alphas), np.asarray(betas))  # Ritz vectors: device runs


def lanczos_start_jit():
    """The compiled start of `lanczos_iterate` (for memory analysis in benchmarks)."""
    return _jit_start


def lanczos_step_jit():
    """The step of `lanczos_iterate` as one jitted program (for memory analysis in
    benchmarks: `lanczos_iterate` runs it as the operator's product, then the rest)."""
    return jax.jit(_step, donate_argnums=(2,))
