"""Optimizer and learning-rate schedule from `config.optimizer`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax

from nme_train.registry import Registry

SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(o: Any, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_epochs`, then constant, cosine or linear decay to 0."""
    warmup = int(round(o.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if o.schedule == "cosine":
        main = optax.cosine_decay_schedule(o.learning_rate, decay_steps)
    elif o.schedule == "linear":
        main = optax.linear_schedule(o.learning_rate, 0.0, decay_steps)
    else:
        main = optax.constant_schedule(o.learning_rate)
    if warmup == 0:
        return main
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.learning_rate, warmup), main], [warmup]
    )


WEIGHT_DECAY_ON = ("kernels", "all")


def _decay_mask(which: str):
    """Weight decay mask: `kernels` = matrices and conv kernels; `all` = every parameter."""
    if which == "all":
        return None
    return lambda params: jax.tree.map(lambda p: p.ndim > 1, params)


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
    """An optimizer by name: `factory(config.optimizer, schedule, decay_mask)`. Coupled
    ones get the L2 term added to the gradient before them (the factory ignores the
    mask); `decoupled` ones take the weight decay themselves (adamw)."""

    factory: Callable[[Any, optax.Schedule, Any], optax.GradientTransformation]
    decoupled: bool = False


OPTIMIZERS: Registry[OptimizerEntry] = Registry("optimizer", "config.optimizer.name")


def register_optimizer(name: str, factory: Callable[..., optax.GradientTransformation],
                       decoupled: bool = False, replace: bool = False) -> OptimizerEntry:
    """Adds `factory(config.optimizer, schedule, decay_mask) -> optax transformation`."""
    return OPTIMIZERS.register(name, OptimizerEntry(factory, decoupled), replace=replace)


register_optimizer("sgd", lambda o, lr, mask: optax.sgd(lr))
register_optimizer("momentum", lambda o, lr, mask: optax.sgd(lr, momentum=o.momentum))
register_optimizer("nesterov",
                   lambda o, lr, mask: optax.sgd(lr, momentum=o.momentum, nesterov=True))
register_optimizer("adam", lambda o, lr, mask: optax.adam(lr))
register_optimizer("adamw", lambda o, lr, mask: optax.adamw(lr, weight_decay=o.weight_decay,
                                                             mask=mask), decoupled=True)


def stability_threshold(o: Any, learning_rate: float) -> float | None:
    """The largest curvature lambda along which the optimizer's step is stable on a
    quadratic at step size eta: 2/eta (SGD), (2 + 2 mu)/eta (heavy-ball momentum mu),
    (2 + 2 mu)/((1 + 2 mu) eta) (Nesterov); None for the adaptive optimizers, whose
    preconditioner changes the threshold per direction."""
    if learning_rate <= 0 or o.name not in ("sgd", "momentum", "nesterov"):
        return None
    mu = o.momentum if o.name != "sgd" else 0.0
    if o.name == "nesterov":
        return (2 + 2 * mu) / ((1 + 2 * mu) * learning_rate)
    return (2 + 2 * mu) / learning_rate


def optimizer_names() -> list[str]:
    return sorted(OPTIMIZERS)


def make_optimizer(o: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optax transformation of `config.optimizer`.

    For SGD variants weight decay is the coupled L2 term added to the
    gradient before momentum (the recipe of the SAM reference code, which
    also decays BatchNorm parameters: `weight_decay_on='all'`); for `adamw`
    it is decoupled.
    """
    mask = _decay_mask(o.weight_decay_on)
    parts = []
    if o.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
    entry = OPTIMIZERS[o.name]
    if o.weight_decay > 0 and not entry.decoupled:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=mask))
    parts.append(entry.factory(o, schedule, mask))
    return optax.chain(*parts)
