"""Regularizers as composable transforms of the training objective.

    from nme_train import regularizers as reg
    obj = reg.objective(apply_fn, loss_fn)  # apply_fn(params, x), loss_fn(outputs, targets)
    obj = reg.chain(reg.weight_noise(0.01), reg.sam(0.05))(obj)
    grads, aux = jax.grad(obj, has_aux=True)(params, {"inputs": x, "targets": y}, key)

`jax.grad` of a transformed objective is the method's update direction; see
each module for the formula and its cost.
"""

from __future__ import annotations

from nme_train.regularizers.accumulation import (
    Microbatching,
    accumulated_value_and_grad,
    split_microbatches,
    unrolled_loop,
)
from nme_train.regularizers.gradient_penalty import gradient_penalty
from nme_train.regularizers.objective import Objective, Transform, chain, objective
from nme_train.regularizers.registry import REGULARIZERS, from_config, register_regularizer
from nme_train.regularizers.sam import sam
from nme_train.regularizers.trace_penalties import (
    gauss_newton_trace_penalty,
    hessian_trace_penalty,
)
from nme_train.regularizers.weight_noise import weight_noise

__all__ = ["Objective", "Transform", "chain", "objective", "sam", "gradient_penalty",
           "weight_noise", "hessian_trace_penalty", "gauss_newton_trace_penalty",
           "REGULARIZERS", "register_regularizer", "from_config", "accumulated_value_and_grad",
           "split_microbatches", "Microbatching", "unrolled_loop"]
