"""Models chosen by name from `config.model`, through the registry (models/registry.py).

All models are flax linen modules called as `model.apply(variables, images,
train=...)` on NHWC images and return float32 logits (float64 for a float64
model, for reference computations). The activation is picked by name
(`config.model.activation`), so every architecture accepts every activation,
including the second-derivative interventions. A new architecture is one
module that registers itself (`register_model`) and one import line below.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# the architectures: importing a module registers it
from nme_train.models import cnn, mlp, resnet, wide_resnet  # noqa: F401
from nme_train.models.activations import ablated_twin, activation_names, get_activation
from nme_train.models.cnn import CNN
from nme_train.models.mlp import MLP
from nme_train.models.registry import MODELS, register_model
from nme_train.models.resnet import ResNet
from nme_train.models.wide_resnet import WideResNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
          "float64": jnp.float64}

__all__ = ["MODELS", "DTYPES", "build_model", "build_ablated_model", "register_model",
           "get_activation",
           "activation_names", "CNN", "MLP", "ResNet", "WideResNet"]


def build_model(model_config: Any, num_classes: int) -> nn.Module:
    """Builds the flax module described by `config.model` (already validated)."""
    c = model_config
    if c.name not in MODELS:
        raise ValueError(f"unknown model {c.name!r}; choose one of {sorted(MODELS)}")
    return MODELS[c.name].build(
        c, num_classes=num_classes,
        activation=get_activation(c.activation, beta=c.get("beta", 1.0)),
        batch_norm=c.batch_norm, dtype=DTYPES[c.dtype], param_dtype=DTYPES[c.param_dtype])


def build_ablated_model(model_config: Any, num_classes: int) -> nn.Module | None:
    """The same model with its activation replaced by the activation's ablated twin (same
    value and slope, sigma'' = 0; models/activations.py), or None when it has none.

    It takes the same variables as `build_model`'s module and computes the same outputs;
    only its second derivatives lack the activations' part (the NME split by source).
    """
    twin = ablated_twin(model_config.activation)
    if twin is None:
        return None
    twin_config = model_config.copy_and_resolve_references()
    with twin_config.unlocked():
        twin_config.activation = twin
    return build_model(twin_config, num_classes)
