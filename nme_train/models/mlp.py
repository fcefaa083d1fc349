"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nme_train.models.activations import Activation
from nme_train.models.layers import activate, make_norm
from nme_train.models.registry import register_model


class MLP(nn.Module):
    """Dense layers `hidden`, each followed by (optional BatchNorm and) the activation."""

    num_classes: int
    activation: Activation
    hidden: Sequence[int] = (512, 512)
    batch_norm: bool = False
    ablate_norm: bool = False  # BatchNorm's statistics add no curvature (layers.BatchNorm)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        norm = make_norm(self.batch_norm, train, self.dtype, self.param_dtype, self.ablate_norm)
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for width in self.hidden:
            x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype)(x)
            x = activate(self, self.activation, norm()(x))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))  # f32, or f64


def check_mlp(m: Any) -> list[str]:
    if not m.hidden:
        return ["config.model.hidden is empty; give the layer widths, e.g. (512, 512)"]
    return []


@register_model("mlp", check=check_mlp, example={"hidden": (8,)}, settings={
    "hidden": ((128,), "cnn, mlp: widths of the dense hidden layers")})
def build_mlp(m: Any, **common: Any) -> MLP:
    return MLP(hidden=tuple(m.hidden), **common)
