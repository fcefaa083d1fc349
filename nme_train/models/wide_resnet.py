"""WideResNet-d-k (Zagoruyko & Komodakis, 2016), pre-activation blocks.

depth d = 6n + 4 gives n blocks in each of three groups of widths 16k, 32k, 64k.
WRN-28-10 (n = 4, k = 10, 36.5 M parameters) is the SAM paper's CIFAR model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nme_train.models.activations import Activation
from nme_train.models.layers import activate, global_avg_pool, make_norm
from nme_train.models.registry import positive_number, register_model


class WideBlock(nn.Module):
    """norm -> act -> conv3x3 -> norm -> act -> conv3x3, plus a (projected) shortcut."""

    filters: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., Any]
    activation: Activation
    strides: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        o = activate(self, self.activation, self.norm()(x))
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(o)
        y = activate(self, self.activation, self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        if x.shape != y.shape:
            x = self.conv(self.filters, (1, 1), (self.strides, self.strides), name="proj")(o)
        return x + y


class WideResNet(nn.Module):
    """WRN-`depth`-`width`."""

    num_classes: int
    activation: Activation
    depth: int = 28
    width: int = 10
    batch_norm: bool = True
    ablate_norm: bool = False  # BatchNorm's statistics add no curvature (layers.BatchNorm)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = functools.partial(
            nn.Conv, use_bias=not self.batch_norm, dtype=self.dtype, param_dtype=self.param_dtype
        )
        norm = make_norm(self.batch_norm, train, self.dtype, self.param_dtype, self.ablate_norm)
        blocks_per_group = (self.depth - 4) // 6
        x = conv(16, (3, 3), name="stem_conv")(x.astype(self.dtype))
        for group, base in enumerate((16, 32, 64)):
            for block in range(blocks_per_group):
                strides = 2 if group > 0 and block == 0 else 1
                x = WideBlock(base * self.width, conv, norm, self.activation, strides)(x)
        x = activate(self, self.activation, norm(name="final_norm")(x))
        x = global_avg_pool(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))  # f32, or f64


def check_wide_resnet(m: Any) -> list[str]:
    problems = []
    if not isinstance(m.depth, int) or m.depth < 10 or (m.depth - 4) % 6:
        problems.append(f"config.model.depth={m.depth!r}: a WideResNet needs depth = 6n+4 "
                        "(e.g. 16, 22, 28, 40)")
    return problems + positive_number("config.model.widen_factor", m.widen_factor)


@register_model("wide_resnet", check=check_wide_resnet, example={"depth": 10, "widen_factor": 1},
                settings={"depth": (28, "resnet: 10/18/34/50/101/152; wide_resnet: 6n+4"),
                          "widen_factor": (10, "wide_resnet: the widen factor k of WRN-n-k")})
def build_wide_resnet(m: Any, **common: Any) -> WideResNet:
    return WideResNet(depth=m.depth, width=m.widen_factor, **common)
