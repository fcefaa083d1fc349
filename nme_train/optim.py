"""Optimizer and learning-rate schedule from `config.optimizer`."""

from __future__ import annotations

from typing import Any

import jax
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
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
    if o.name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=o.weight_decay, mask=mask))
        return optax.chain(*parts)
    if o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=mask))
    if o.name == "adam":
        parts.append(optax.adam(schedule))
    elif o.name == "sgd":
        parts.append(optax.sgd(schedule))
    else:
        parts.append(optax.sgd(schedule, momentum=o.momentum, nesterov=o.name == "nesterov"))
    return optax.chain(*parts)
