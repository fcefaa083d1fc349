"""Curvature operators of a loss averaged over probe batches: H, G, the NME, the Fisher.

A `Curvature` describes the loss

    L(theta) = sum_b (n_b / N) loss(apply_fn(theta, inputs_b), targets_b)

over a list of probe batches of n_b examples each (N = sum n_b; `loss` is a
mean over its batch, so batches of unequal size are weighted by their
size). `operator(kind, params, batches)` returns the matvec v -> M v for a
kind registered in `OPERATORS`:

  hessian       jvp of the gradient (forward over reverse);
  gauss_newton  J^T H_z J v: the model's JVP, the closed-form output
                Hessian, the model's VJP (no second derivative of the model);
  nme           the jvp of theta -> J(theta)^T r with the residual
                r = dloss/dz held fixed: the NME directly, not H v - G v;
  nme_activation, nme_rest, nme_normalization, nme_between
                the NME by its source, from twins of the network (Curvature's
                ablated_apply_fn, between_apply_fn): NME = NME_act + NME_rest and
                NME_rest = NME_norm + NME_between;
  fisher        the empirical Fisher (1/n) sum_i g_i g_i^T v of the
                per-example gradients g_i = J_i^T dl_i/dz_i: J v, then each
                example's output tangent projected on its own residual, then
                the model's VJP. (The true Fisher of a softmax cross-entropy,
                labels drawn from the model, is G itself.)

A new kind is one function `build(curvature, params, batch) -> matvec` of
one batch, registered with `register_operator`; every probe figure then
works on it.

With `linearize=True` (the default) the work that does not depend on v is
done once when the operator is built, and each matvec runs only the linear
passes: the gradient map is linearised (`jax.linearize`) for H and NME; for
G and the Fisher one `jax.vjp` of the model is kept and its transpose gives
J v, so both directions share one set of residuals. This holds the
residuals of every probe batch in memory; `linearize=False` recomputes
them in every matvec instead. Build the operator inside the jitted
function that uses it (a Lanczos run, a trace estimate): XLA then keeps the
residuals for the whole run and nothing is gathered or re-traced per matvec.

`apply_fn(params, inputs)` must be deterministic: the operators are only
symmetric if every call sees the same function (no dropout, or a fixed
key; BatchNorm in one fixed mode). `check_deterministic` tests that.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from nme_train.curvature.losses import OutputLoss, as_output_loss
from nme_train.registry import Registry

Params = Any
Batch = dict  # {"inputs": ..., "targets": ...}
Matvec = Callable[[Params], Params]


@dataclasses.dataclass(frozen=True)
class OperatorKind:
    """A curvature operator the probes can run: its name, its short label, how to build it,
    and which of the Curvature's twins of the network it needs (the validator refuses it
    for a model that has none, in one line)."""

    name: str
    label: str  # short, for console lines, plots and TensorBoard layouts: "H", "G", ...
    build: Callable[[Curvature, Params, Batch], Matvec]  # the linear map of one batch
    psd: bool  # positive semi-definite (its bottom eigenvalues are of little interest)
    needs: tuple[str, ...] = ()  # Curvature fields: "ablated_apply_fn", "between_apply_fn"


OPERATORS: Registry[OperatorKind] = Registry("curvature kind", "config.probes.kinds")


def register_operator(name: str, label: str, psd: bool = False, needs: tuple[str, ...] = (),
                      replace: bool = False):
    """Decorator: registers `build(curvature, params, batch) -> matvec` as operator `name`."""
    return OPERATORS.decorator(name, lambda build: OperatorKind(name, label, build, psd,
                                                                tuple(needs)),
                               replace=replace)


def kind_label(kind: str) -> str:
    """The short label of operator `kind` ("H" for hessian), or the name itself."""
    return OPERATORS[kind].label if kind in OPERATORS else kind


@dataclasses.dataclass(frozen=True)
class Curvature:
    """The loss `loss(apply_fn(params, inputs), targets)` whose curvature is probed."""

    apply_fn: Callable[[Params, Any], Any]
    loss: OutputLoss | Callable[[Any, Any], jax.Array]
    # The same network with each activation replaced by its ablated twin (same value and
    # slope, second derivative 0), on the same parameters: the nme_rest and
    # nme_activation kinds split the NME by its source with it. None: no such split.
    ablated_apply_fn: Callable[[Params, Any], Any] | None = None
    # The same with BatchNorm's statistics adding no curvature too (models.layers.BatchNorm):
    # its NME is the part between layers; nme_normalization and nme_between use it.
    between_apply_fn: Callable[[Params, Any], Any] | None = None

    @property
    def output_loss(self) -> OutputLoss:
        return as_output_loss(self.loss)

    def batch_loss(self, params: Params, batch: Batch) -> jax.Array:
        return self.output_loss(self.apply_fn(params, batch["inputs"]), batch["targets"])

    def loss_value(self, params: Params, batches: Sequence[Batch]) -> jax.Array:
        """L(params): the size-weighted mean of the batch losses."""
        weights = batch_weights(batches)
        return sum(w * self.batch_loss(params, b) for w, b in zip(weights, batches))

    def gradient(self, params: Params, batches: Sequence[Batch]) -> Params:
        return jax.grad(self.loss_value)(params, batches)

    def operator(self, kind: str, params: Params, batches: Sequence[Batch],
                 linearize: bool = True) -> Matvec:
        """The matvec v -> M v of M = `kind` at `params` over `batches`."""
        weights = batch_weights(batches)
        build = functools.partial(OPERATORS[kind].build, self)
        if linearize:
            parts = [build(params, b) for b in batches]
            return lambda v: functools.reduce(otu.tree_add, [
                otu.tree_scale(w, mv(v)) for w, mv in zip(weights, parts)])
        return lambda v: functools.reduce(otu.tree_add, [
            otu.tree_scale(w, build(params, b)(v)) for w, b in zip(weights, batches)])

    def linear_operator(self, kind: str, params: Params, batches: Sequence[Batch]) -> Any:
        """The operator as a `jax.tree_util.Partial`: a pytree holding its residuals.

        Build it under jit (`jax.jit(curv.linear_operator, static_argnums=0)`)
        and pass it to other jitted functions (`lanczos_iterate`, `apply`):
        the linearisation is computed once, and every later matvec runs only
        the linear passes, without re-tracing.
        """
        matvec = self.operator(kind, params, batches, linearize=True)
        return jax.linearize(matvec, jax.tree.map(jnp.zeros_like, params))[1]


# The registered kinds. Each builder returns the linear map of one batch, its
# v-independent work done. KINDS: the decomposition H = G + NME, the default probe.

@register_operator("hessian", "H")
def hessian_of_batch(curv: Curvature, params: Params, batch: Batch) -> Matvec:
    return jax.linearize(jax.grad(lambda p: curv.batch_loss(p, batch)), params)[1]


def _output_space_product(curv: Curvature, params: Params, batch: Batch,
                          product: Callable[[jax.Array, Any, jax.Array], jax.Array]) -> Matvec:
    """v -> J^T product(z, targets, J v): one VJP of the model, transposed for J v."""
    z, pullback = jax.vjp(lambda p: curv.apply_fn(p, batch["inputs"]), params)
    push = jax.linear_transpose(pullback, z)  # J v from the same residuals

    def matvec(v):
        (jv,) = push((v,))
        return pullback(product(z, batch["targets"], jv))[0]

    return matvec


@register_operator("gauss_newton", "G", psd=True)
def gauss_newton_of_batch(curv: Curvature, params: Params, batch: Batch) -> Matvec:
    return _output_space_product(curv, params, batch, curv.output_loss.hessian_product)


@register_operator("nme", "NME")
def nme_of_batch(curv: Curvature, params: Params, batch: Batch) -> Matvec:
    def model(p):
        return curv.apply_fn(p, batch["inputs"])

    z = model(params)
    r = jax.lax.stop_gradient(curv.output_loss.residual(z, batch["targets"]))
    return jax.linearize(lambda p: jax.vjp(model, p)[1](r)[0], params)[1]


@register_operator("fisher", "F", psd=True)
def empirical_fisher_of_batch(curv: Curvature, params: Params, batch: Batch) -> Matvec:
    """(1/n) sum_i g_i g_i^T: with r = dL/dz of the batch mean, g_i = n J_i^T r_i, so
    F v = J^T c with c_i = n r_i (r_i . (J v)_i)."""
    residual = curv.output_loss.residual

    def product(z, targets, u):
        r = residual(z, targets)
        r2 = r.reshape(r.shape[0], -1)
        along = jnp.sum(r2 * u.reshape(r2.shape), axis=-1)
        return (r.shape[0] * r2 * along[:, None]).reshape(r.shape)

    return _output_space_product(curv, params, batch, product)


def _ablated(curv: Curvature, kind: str, field: str = "ablated_apply_fn") -> Curvature:
    twin = getattr(curv, field)
    if twin is None:
        raise ValueError(f"the {kind} operator needs the network with its NME sources "
                         f"ablated (Curvature(..., {field}=...)); this one has none")
    return dataclasses.replace(curv, apply_fn=twin)


@register_operator("nme_rest", "NME_rest", needs=("ablated_apply_fn",))
def nme_rest_of_batch(curv: Curvature, params: Params, batch: Batch) -> Matvec:
    """The NME without the activations' second derivatives: products of weights across
    layers, normalization, pooling. The ablated twin's NME at the same weights (the same
    values, slopes, residuals and G; only sigma'' is zero)."""
    return nme_of_batch(_ablated(curv, "nme_rest"), params, batch)


@register_operator("nme_activation", "NME_act", needs=("ablated_apply_fn",))
def nme_activation_of_batch(curv: Curvature, params: Params, batch: Batch) -> Matvec:
    """The activations' part of the NME, sum_u g_u sigma''(a_u) grad a_u grad a_u^T (g_u: the
    residual's backpropagated signal at unit u, a_u its pre-activation): NME - NME_rest.
    Each product costs two NME products."""
    full, rest = nme_of_batch(curv, params, batch), nme_rest_of_batch(curv, params, batch)
    return lambda v: otu.tree_sub(full(v), rest(v))


@register_operator("nme_normalization", "NME_norm",
                   needs=("ablated_apply_fn", "between_apply_fn"))
def nme_normalization_of_batch(curv: Curvature, params: Params, batch: Batch) -> Matvec:
    """BatchNorm's part of the NME: the curvature its batch statistics add (they depend on
    the layer's input), NME_rest - NME_between, from two nested twins. Zero without
    BatchNorm, and with BatchNorm on its running averages (probes.batch_norm)."""
    rest = nme_rest_of_batch(curv, params, batch)
    between = nme_between_of_batch(curv, params, batch)
    return lambda v: otu.tree_sub(rest(v), between(v))


@register_operator("nme_between", "NME_between", needs=("between_apply_fn",))
def nme_between_of_batch(curv: Curvature, params: Params, batch: Batch) -> Matvec:
    """The NME between layers: products of weights across layers (and a scale with the
    normalized values it multiplies), without sigma'' and BatchNorm's statistics: the NME
    of the twin with both ablated. NME = NME_act + NME_norm + NME_between exactly."""
    return nme_of_batch(_ablated(curv, "nme_between", "between_apply_fn"), params, batch)


KINDS = ("hessian", "gauss_newton", "nme")


def batch_weights(batches: Sequence[Batch]) -> list[float]:
    """n_b / N for each batch (n_b from the leading axis of its targets)."""
    if not batches:
        raise ValueError("curvature: no probe batches given")
    sizes = [int(jax.tree.leaves(b["targets"])[0].shape[0]) for b in batches]
    total = sum(sizes)
    return [n / total for n in sizes]


@jax.jit
def _difference_and_norm(a: Params, b: Params) -> tuple[jax.Array, jax.Array]:
    """(||a - b||, ||a||) in one program (op by op, each leaf's shape compiled its own)."""
    return otu.tree_norm(otu.tree_sub(a, b)), otu.tree_norm(a)


def check_deterministic(matvec: Matvec, v: Params, name: str = "operator") -> None:
    """Raises ValueError when two products with the same vector differ.

    A model with dropout (without a fixed key) or a BatchNorm that updates
    its statistics between calls gives a different operator on every call;
    Lanczos and trace estimates are then meaningless.
    """
    a = jax.block_until_ready(matvec(v))  # one at a time: concurrent multi-device
    b = matvec(v)  # programs can starve each other's collectives on a small CPU
    diff, scale = (float(x) for x in _difference_and_norm(a, b))
    if not np.isfinite(diff) or diff > 1e-6 * max(scale, 1e-30):
        raise ValueError(
            f"{name} is not deterministic: two products with the same vector differ by "
            f"{diff:.3g} (norm {scale:.3g}). Turn dropout off or fix its key, and use one "
            "BatchNorm mode (probes.batch_norm) for every call.")
