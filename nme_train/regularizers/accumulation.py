"""Gradient accumulation: an objective's update from a batch split into k microbatches.

`accumulated_value_and_grad(obj, params, microbatches, rng)` returns what
`jax.value_and_grad(obj, has_aux=True)(params, batch, rng)` returns for the whole batch,
while holding one microbatch's activations at a time (a `lax.scan` over them):
`microbatches` is the batch with a leading axis of k (`split_microbatches`).

By default it is the mean over microbatches of each one's value and gradient: exact for
any objective that is a mean over examples with one random draw per step: plain training,
weight noise (the same noise for every microbatch: the same key), the Hessian trace
penalty and the Gauss-Newton trace penalty with Hutchinson probes (the same probe vectors:
vᵀHv and vᵀGv are means over examples), and SAM with m-sharpness (its groups lie inside a
microbatch). A transform whose update needs a statistic of the whole batch gives its
objective an `accumulate` of its own, in two passes over the microbatches:

  SAM (one perturbation)  pass 1 the whole batch's gradient g, then eps = rho g/||g||;
                          pass 2 the gradient at theta + eps;
  the gradient penalty    pass 1 g; pass 2 M g^ (H, G, or by source) as the mean of the
                          microbatches' products; the update g + rho ||g||^(p-2) M g^.
Weight noise passes the accumulation through to the objective it wraps, at theta + eps.

Not exact (and said so in docs/imagenet.md): BatchNorm normalises each microbatch with
its own statistics (ghost batch normalization), and its running averages take the mean
of the microbatches' updates; the Gauss-Newton trace penalty with sampled labels (the
paper's estimator) squares the gradient of a microbatch's mean, so its estimate is of the
microbatches', unbiased for Tr G but not the whole batch's value.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from nme_train.regularizers.objective import Objective

Accumulate = Callable[[Any, dict, jax.Array], tuple[tuple[jax.Array, dict], Any]]


class Microbatching(NamedTuple):
    """How a training step splits its batch (nme_train.train.step)."""

    k: int  # microbatches per step (config.grad_accum_steps)
    shards: int  # the batch's device shards: each microbatch takes a part of every one
    sharding: Any  # the microbatches' layout, [k, B / k, ...]
    unroll: bool = False  # the loop unrolled: see `unrolled_loop`


_UNROLL = contextvars.ContextVar("unroll_microbatch_loop", default=False)


@contextlib.contextmanager
def unrolled_loop(unroll: bool) -> Iterator[None]:
    """While tracing inside it, the loops over microbatches are unrolled (`unroll`) or a
    `lax.scan` (default). The scan holds one microbatch's activations at a time, which is
    the point on a GPU or TPU; XLA's CPU backend, though, runs the convolutions of a loop
    body on a slow path (the default CNN's step, k = 2: 20-40x slower rolled than
    unrolled, tools/bench_accumulation.py), so the trainer unrolls on CPUs, where memory
    is rarely the limit; the dry run compiles the scan, as an accelerator runs it."""
    token = _UNROLL.set(unroll)
    try:
        yield
    finally:
        _UNROLL.reset(token)


def split_microbatches(batch: Any, k: int, groups: int = 1) -> Any:
    """[B, ...] -> [k, B / k, ...]: microbatch j takes the j-th slice of each of `groups`
    equal blocks of the batch (the devices' shards), so every microbatch is spread over
    every device as the whole batch is."""
    def split(x):
        b = x.shape[0] // (groups * k)
        y = x.reshape((groups, k, b, *x.shape[1:]))
        return jnp.swapaxes(y, 0, 1).reshape((k, groups * b, *x.shape[1:]))

    return jax.tree.map(split, batch)


def merge_aux(aux: dict) -> dict:
    """The aux of k microbatches (leading axis k) as one batch's: metrics and model state
    averaged (a running statistic's update is linear in the batch statistic), outputs
    concatenated in microbatch order."""
    return {"metrics": jax.tree.map(lambda x: jnp.mean(x, axis=0), aux["metrics"]),
            "outputs": jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), aux["outputs"]),
            "state": jax.tree.map(lambda x: jnp.mean(x, axis=0), aux["state"])}


def mean_over_microbatches(fn: Callable[[dict], tuple[Any, Any]], microbatches: dict,
                           ) -> tuple[Any, Any]:
    """(mean over microbatches of fn's first output, fn's second output stacked over
    microbatches): `fn(microbatch) -> (summed part, stacked part)`, one microbatch at a
    time in a `lax.scan` (so one microbatch's activations are live at once)."""
    k = jax.tree.leaves(microbatches)[0].shape[0]
    summed_shape = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], microbatches))[0]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), summed_shape)

    def body(total, microbatch):
        summed, stacked = fn(microbatch)
        return otu.tree_add(total, summed), stacked

    total, stacked = jax.lax.scan(body, zeros, microbatches, unroll=bool(_UNROLL.get()))
    return jax.tree.map(lambda t: t / k, total), stacked


def accumulated_value_and_grad(obj: Objective, params: Any, microbatches: dict,
                               rng: jax.Array) -> tuple[tuple[jax.Array, dict], Any]:
    """((value, aux), grads) of `obj` over the microbatches, as for the whole batch."""
    if obj.accumulate is not None:
        return obj.accumulate(params, microbatches, rng)
    value_and_grad = jax.value_and_grad(obj.value, has_aux=True)

    def one(microbatch):
        (value, aux), grads = value_and_grad(params, microbatch, rng)
        return (value, grads), aux

    (value, grads), aux = mean_over_microbatches(one, microbatches)
    return (value, merge_aux(aux)), grads


def mean_product(product: Callable[[dict], Any], microbatches: dict) -> Any:
    """The mean over microbatches of `product(microbatch)` (a pytree)."""
    return mean_over_microbatches(lambda mb: (product(mb), ()), microbatches)[0]
