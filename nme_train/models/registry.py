"""The model registry: each architecture module registers its name, its builder and its
config checks, so the trainer and the validator ask here instead of naming models.

    @register_model("cnn", check=check_cnn)
    def build_cnn(m, **common) -> nn.Module:     # m = config.model
        return CNN(features=tuple(m.features), ..., **common)

`common` holds what every model takes: num_classes, activation, batch_norm,
dtype, param_dtype. `check(m) -> [problem, ...]` returns one line per
problem, naming the field and the fix (nme_train.validation prints them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]  # (config.model, **common) -> module
    check: Callable[[Any], list[str]]  # config.model -> problems


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, check: Callable[[Any], list[str]] = lambda m: []):
    """Decorator: registers `build(config.model, **common)` as model `name`."""
    def register(build):
        MODELS[name] = ModelEntry(build, check)
        return build
    return register


def positive_number(field: str, value: Any) -> list[str]:
    """[] when `value` is a number > 0, else the problem line for `field`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return [] if ok else [f"{field}={value!r} must be a number > 0"]
