"""ResNet-18/34/50/101/152 (He et al., 2016) with an ImageNet or a CIFAR stem, and
ResNet-10 (one basic block per stage: quick compiles, for smoke tests).

The ImageNet stem is a 7x7 stride-2 convolution and a 3x3 stride-2 max pool;
the CIFAR stem is a single 3x3 stride-1 convolution (the usual choice for
32x32 inputs, as in the SAM paper's CIFAR ResNets). The last BatchNorm of each
residual branch starts at zero scale, so every block starts as the identity.
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

STAGE_SIZES = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

STEMS = ("imagenet", "cifar")  # 7x7/2 conv + max pool, or one 3x3/1 conv


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    filters: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., Any]
    activation: Activation
    strides: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
        y = activate(self, self.activation, self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if x.shape != y.shape:
            x = self.conv(self.filters, (1, 1), (self.strides, self.strides), name="proj")(x)
            x = self.norm(name="proj_norm")(x)
        return activate(self, self.activation, x + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) convolutions (ResNet-50 and deeper)."""

    filters: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., Any]
    activation: Activation
    strides: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = activate(self, self.activation, self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
        y = activate(self, self.activation, self.norm()(y))
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if x.shape != y.shape:
            x = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides), name="proj")(x)
            x = self.norm(name="proj_norm")(x)
        return activate(self, self.activation, x + y)


class ResNet(nn.Module):
    """ResNet of a given depth; `width` is the number of filters of the first stage."""

    num_classes: int
    activation: Activation
    depth: int = 18
    width: int = 64
    stem: str = "imagenet"  # one of STEMS
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
        block_cls = BasicBlock if self.depth < 50 else BottleneckBlock
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
            x = activate(self, self.activation, norm(name="stem_norm")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        else:
            x = conv(self.width, (3, 3), name="stem_conv")(x)
            x = activate(self, self.activation, norm(name="stem_norm")(x))
        for stage, num_blocks in enumerate(STAGE_SIZES[self.depth]):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = block_cls(self.width * 2**stage, conv, norm, self.activation, strides)(x)
        x = global_avg_pool(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))  # f32, or f64


def check_resnet(m: Any) -> list[str]:
    problems = []
    if m.depth not in STAGE_SIZES:
        problems.append(f"config.model.depth={m.depth!r} is not a ResNet depth; "
                        f"use one of {sorted(STAGE_SIZES)}")
    if m.stem not in STEMS:
        problems.append(f"config.model.stem={m.stem!r} is not known; choose one of "
                        f"{sorted(STEMS)}")
    return problems + positive_number("config.model.width", m.width)


@register_model("resnet", check=check_resnet, example={"depth": 10, "width": 2}, settings={
    "depth": (18, "resnet: 10/18/34/50/101/152; wide_resnet: 6n+4"),
    "width": (16, "resnet: filters of the first stage"),
    "stem": ("cifar", "resnet: cifar (3x3 conv) | imagenet (7x7/2 conv + max pool)")})
def build_resnet(m: Any, **common: Any) -> ResNet:
    return ResNet(depth=m.depth, width=m.width, stem=m.stem, **common)
