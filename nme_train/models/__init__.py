"""Models chosen by name from `config.model`.

All models are flax linen modules called as `model.apply(variables, images,
train=...)` on NHWC images and return float32 logits (float64 for a float64
model, for reference computations). The activation is picked by name
(`config.model.activation`), so every architecture accepts every activation,
including the second-derivative interventions.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nme_train.models.activations import activation_names, get_activation
from nme_train.models.cnn import CNN
from nme_train.models.mlp import MLP
from nme_train.models.resnet import STAGE_SIZES, ResNet
from nme_train.models.wide_resnet import WideResNet

MODEL_NAMES = ("mlp", "cnn", "resnet", "wide_resnet")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
          "float64": jnp.float64}

__all__ = ["MODEL_NAMES", "DTYPES", "build_model", "get_activation", "activation_names",
           "CNN", "MLP", "ResNet", "WideResNet", "STAGE_SIZES"]


def build_model(model_config: Any, num_classes: int) -> nn.Module:
    """Builds the flax module described by `config.model` (already validated)."""
    c = model_config
    common = dict(
        num_classes=num_classes,
        activation=get_activation(c.activation, beta=c.get("beta", 1.0)),
        batch_norm=c.batch_norm,
        dtype=DTYPES[c.dtype],
        param_dtype=DTYPES[c.param_dtype],
    )
    if c.name == "mlp":
        return MLP(hidden=tuple(c.hidden), **common)
    if c.name == "cnn":
        return CNN(features=tuple(c.features), hidden=tuple(c.hidden), pool=c.pool, **common)
    if c.name == "resnet":
        return ResNet(depth=c.depth, width=c.width, stem=c.stem, **common)
    if c.name == "wide_resnet":
        return WideResNet(depth=c.depth, width=c.width, **common)
    raise ValueError(f"unknown model {c.name!r}; choose one of {MODEL_NAMES}")
