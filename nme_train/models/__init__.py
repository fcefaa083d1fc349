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
from nme_train.models.registry import (
    MODELS,
    Setting,
    model_fields,
    register_model,
    setting_problems,
    use_model,
)
from nme_train.models.resnet import ResNet
from nme_train.models.wide_resnet import WideResNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
          "float64": jnp.float64}

__all__ = ["MODELS", "DTYPES", "ABLATIONS", "Setting", "build_model", "build_ablated_model",
           "register_model", "model_fields", "setting_problems", "use_model",
           "get_activation", "activation_names", "CNN", "MLP", "ResNet", "WideResNet"]


ABLATIONS = ("activation", "normalization")  # the NME sources a twin can remove


def build_model(model_config: Any, num_classes: int, ablate: tuple[str, ...] = ()) -> nn.Module:
    """Builds the flax module described by `config.model` (already validated).

    `ablate` builds a twin of it for the NME split by source: "activation" replaces the
    activation by its ablated twin (same value and slope, sigma'' = 0), "normalization"
    makes BatchNorm's statistics add no curvature (layers.BatchNorm). A twin takes the
    same variables and computes the same outputs and first derivatives.
    """
    c = model_config
    if c.name not in MODELS:
        raise ValueError(f"unknown model {c.name!r}; choose one of {sorted(MODELS)}")
    activation = c.activation
    if "activation" in ablate:
        activation = ablated_twin(c.activation)
        if activation is None:
            raise ValueError(f"activation {c.activation!r} has no ablated twin")
    extra = {"ablate_norm": True} if "normalization" in ablate else {}
    return MODELS[c.name].build(
        c, num_classes=num_classes,
        activation=get_activation(activation, beta=c.get("beta", 1.0)),
        batch_norm=c.batch_norm, dtype=DTYPES[c.dtype], param_dtype=DTYPES[c.param_dtype],
        **extra)


def build_ablated_model(model_config: Any, num_classes: int,
                        ablate: tuple[str, ...] = ("activation",)) -> nn.Module | None:
    """The model with the NME sources `ablate` removed (build_model), or None when its
    activation has no ablated twin.

    ("activation",): its NME is NME_rest (normalization and products of weights across
    layers); ("activation", "normalization"): its NME is the part between layers.
    """
    if ablated_twin(model_config.activation) is None:
        return None
    return build_model(model_config, num_classes, ablate)
