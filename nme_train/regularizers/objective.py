"""Objectives and their transforms: the common type of every regularizer.

An `Objective` is the training loss as a function of the parameters,

    value(params, batch, rng) -> (scalar, aux)

built from a model `apply_fn(params, inputs) -> outputs` and an output
loss `loss_fn(outputs, targets) -> scalar` (a mean over the batch). `batch`
is a dict with "inputs" and "targets". `aux` is a dict with
  "metrics": scalars for logging (each regularizer adds its diagnostics),
  "outputs": the model outputs of the clean pass (for accuracy),
  "state":   the updated model state (e.g. BatchNorm statistics) or None.

A transform maps an Objective to an Objective; `jax.grad` of the result's
value is the method's update direction. Transforms compose with `chain`,
innermost first: `chain(weight_noise(0.01), sam(0.05))(obj)` is SAM applied
to the noisy objective.

Transforms that need the Gauss-Newton matrix (gradient penalty with
`nme=False`, the Gauss-Newton trace penalty) use the objective's model
(`apply_fn`, `loss_fn`) at the parameters they are given; when they sit on
top of a transform that moves the parameters (weight noise, SAM), that is
the model at the unperturbed point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

Params = Any
Batch = dict
Aux = dict
ValueFn = Callable[[Params, Batch, jax.Array], tuple[jax.Array, Aux]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A loss to differentiate, with the model it is built on."""

    value: ValueFn
    apply_fn: Callable[[Params, Any], Any]  # (params, inputs) -> outputs (or (outputs, state))
    loss_fn: Callable[[Any, Any], jax.Array]  # (outputs, targets) -> mean loss
    has_state: bool = False  # apply_fn returns (outputs, new_state)
    # value is loss_fn(aux["outputs"], targets) with aux["outputs"] = apply_fn(params):
    # true for `objective(...)`, false once a transform has wrapped it.
    plain: bool = False
    # The same network with each activation replaced by its ablated twin (same value and
    # slope, sigma'' = 0), called like apply_fn: the gradient penalty's updates by source
    # (G + NME_rest, G + NME_act) use it. None: the model has no such twin.
    ablated_apply_fn: Callable[[Params, Any], Any] | None = None
    # ((value, aux), grads) over microbatches (leading axis k) as for the whole batch, for a
    # transform whose update needs a statistic of the whole batch (regularizers/
    # accumulation.py); None: the mean over microbatches, exact for means over examples.
    accumulate: Callable[[Params, Batch, jax.Array], Any] | None = None

    def __call__(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Aux]:
        return self.value(params, batch, rng)

    def outputs(self, params: Params, inputs: Any, ablated: bool = False) -> Any:
        """Model outputs only (the state update, if any, is dropped); of the ablated twin
        with `ablated=True`."""
        out = (self.ablated_apply_fn if ablated else self.apply_fn)(params, inputs)
        return out[0] if self.has_state else out

    def with_value(self, value: ValueFn, accumulate: Callable | None = None) -> Objective:
        """The objective of a transform: its value, and its accumulation over microbatches
        when the mean over microbatches is not its update."""
        return dataclasses.replace(self, value=value, plain=False, accumulate=accumulate)


Transform = Callable[[Objective], Objective]


def objective(apply_fn: Callable, loss_fn: Callable, has_state: bool = False,
              ablated_apply_fn: Callable | None = None) -> Objective:
    """The plain objective loss_fn(apply_fn(params, inputs), targets).

    With `has_state=True`, apply_fn returns (outputs, new_model_state), as a
    flax model with BatchNorm does under `mutable=["batch_stats"]` (and so
    does `ablated_apply_fn`, the network with its activations' ablated twins).
    """

    def value(params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Aux]:
        del rng
        out = apply_fn(params, batch["inputs"])
        outputs, state = out if has_state else (out, None)
        loss = loss_fn(outputs, batch["targets"])
        return loss, {"metrics": {"loss": loss}, "outputs": outputs, "state": state}

    return Objective(value, apply_fn, loss_fn, has_state, plain=True,
                     ablated_apply_fn=ablated_apply_fn)


def chain(*transforms: Transform) -> Transform:
    """Applies `transforms` in order: the first one wraps the objective innermost."""

    def apply(obj: Objective) -> Objective:
        for transform in transforms:
            obj = transform(obj)
        return obj

    return apply


def loss_at(obj: Objective, batch: Batch, rng: jax.Array) -> Callable[[Params], jax.Array]:
    """params -> scalar value of `obj` on a fixed batch and key."""
    return lambda params: obj(params, batch, rng)[0]


def add_metrics(aux: Aux, **metrics: jax.Array) -> Aux:
    """`aux` with more diagnostics (names are prefixed by the caller)."""
    return {**aux, "metrics": {**aux["metrics"], **metrics}}
