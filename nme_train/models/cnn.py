"""A small convolutional network (the Fashion-MNIST / digits model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nme_train.models.activations import Activation
from nme_train.models.layers import activate, make_norm
from nme_train.models.registry import register_model

POOLS = ("avg", "max")  # the pooling after each convolution block


class CNN(nn.Module):
    """Stages of conv3x3 -> norm -> activation -> 2x2 pool, then dense layers.

    Average pooling is the default because it is smooth: max pooling adds
    piecewise-linear kinks to every model, whatever its activation, which
    blurs the activation study of the paper. `pool='max'` is available.
    """

    num_classes: int
    activation: Activation
    features: Sequence[int] = (32, 64)
    hidden: Sequence[int] = (128,)
    pool: str = "avg"  # one of POOLS
    batch_norm: bool = True
    ablate_norm: bool = False  # BatchNorm's statistics add no curvature (layers.BatchNorm)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        norm = make_norm(self.batch_norm, train, self.dtype, self.param_dtype, self.ablate_norm)
        pool = nn.avg_pool if self.pool == "avg" else nn.max_pool
        x = x.astype(self.dtype)
        for width in self.features:
            x = nn.Conv(width, (3, 3), use_bias=not self.batch_norm, dtype=self.dtype,
                        param_dtype=self.param_dtype)(x)
            x = activate(self, self.activation, norm()(x))
            x = pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype)(x)
            x = activate(self, self.activation, x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))  # f32, or f64


def check_cnn(m: Any) -> list[str]:
    problems = []
    if m.pool not in POOLS:
        problems.append(f"config.model.pool={m.pool!r} is not known; choose one of {list(POOLS)}")
    if not m.features:
        problems.append("config.model.features is empty; give the conv widths, e.g. (32, 64)")
    return problems


@register_model("cnn", check=check_cnn, example={"features": (4,), "hidden": (8,)}, settings={
    "features": ((32, 64), "cnn: channels of each conv stage (each halves the size)"),
    "hidden": ((128,), "cnn, mlp: widths of the dense hidden layers"),
    "pool": ("avg", "cnn: avg | max pooling between stages")})
def build_cnn(m: Any, **common: Any) -> CNN:
    return CNN(features=tuple(m.features), hidden=tuple(m.hidden), pool=m.pool, **common)
