"""The model registry: each architecture module registers its builder, the config.model
fields it reads (with their defaults and meaning) and its config checks, so the config,
the validator and the trainer ask here instead of naming models.

    @register_model("cnn", settings={"features": ((32, 64), "channels of each conv stage"),
                                     "pool": ("avg", "avg | max pooling between stages")},
                    check=check_cnn, example={"features": (4,), "hidden": (8,)})
    def build_cnn(m, **common) -> nn.Module:     # m = config.model
        return CNN(features=tuple(m.features), ..., **common)

`common` holds what every model takes: num_classes, activation, batch_norm, dtype,
param_dtype (and ablate_norm for the NME split's twins). `config.model` has the common
fields (COMMON) and every registered model's settings, one flat field each: a field
several models read (hidden, depth) is one field, whose default in `base_config()` is
the first declaration's; `use_model(config, name)` selects a model with its own defaults.
The validator checks each setting's type against its default and runs `check(m) ->
[problem, ...]` (one line per problem, naming the field and the fix). `example` is a tiny
setting the tests build every registered model with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from nme_train.registry import Registry


@dataclasses.dataclass(frozen=True)
class Setting:
    """A config.model field a model reads: its default and what it means."""

    default: Any
    doc: str


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]  # (config.model, **common) -> module
    settings: dict[str, Setting]  # the config.model fields it reads beyond COMMON
    check: Callable[[Any], list[str]]  # config.model -> problems
    example: dict[str, Any]  # a tiny setting of its fields, for the tests


MODELS: Registry[ModelEntry] = Registry("model", "config.model.name")

# The fields every model reads (the builder gets them as `common`).
COMMON = {
    "name": Setting("cnn", "the architecture: a registered model"),
    "activation": Setting("relu", "relu | gelu | beta_gelu | the NME interventions "
                                  "(nme_train.models.activations)"),
    "beta": Setting(1.0, "sharpness of beta_gelu and the surrogates: x Phi(beta x)"),
    "batch_norm": Setting(True, "BatchNorm after each conv / dense layer"),
    "dtype": Setting("float32", "computation dtype (bfloat16 for mixed precision)"),
    "param_dtype": Setting("float32", "parameter dtype"),
}


def _setting(value: Any) -> Setting:
    return value if isinstance(value, Setting) else Setting(*value)


def register_model(name: str, settings: dict[str, Any] | None = None,
                   check: Callable[[Any], list[str]] = lambda m: [],
                   example: dict[str, Any] | None = None, replace: bool = False):
    """Decorator: registers `build(config.model, **common)` as model `name`, with the
    config.model fields it reads ({field: Setting or (default, doc)})."""
    declared = {k: _setting(v) for k, v in (settings or {}).items()}
    clash = set(declared) & set(COMMON)
    if clash:
        raise ValueError(f"model {name!r}: {sorted(clash)} are common fields; name its "
                         "settings otherwise")
    return MODELS.decorator(name, lambda build: ModelEntry(build, declared, check,
                                                           dict(example or {})),
                            replace=replace)


def model_fields() -> dict[str, Setting]:
    """Every config.model field: COMMON, then each registered model's settings (a field
    several models read once, with the first declaration)."""
    fields = dict(COMMON)
    for entry in MODELS.values():
        for key, setting in entry.settings.items():
            fields.setdefault(key, setting)
    return fields


def use_model(config: Any, name: str, **values: Any) -> Any:
    """Selects model `name` in `config` with its own defaults for its settings, then
    `values` (config.model.<field>); returns the config."""
    entry = MODELS[name]
    with config.model.unlocked():
        config.model.name = name
        for key, setting in entry.settings.items():
            config.model[key] = setting.default
        for key, value in values.items():
            config.model[key] = value
    return config


def positive_number(field: str, value: Any) -> list[str]:
    """[] when `value` is a number > 0, else the problem line for `field`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return [] if ok else [f"{field}={value!r} must be a number > 0"]


def setting_problems(m: Any) -> list[str]:
    """Settings of the selected model (config.model) whose type differs from its default's."""
    if m.name not in MODELS:
        return []
    problems = []
    for key, setting in MODELS[m.name].settings.items():
        value = m.get(key)
        default = setting.default
        if isinstance(default, (tuple, list)):
            ok = isinstance(value, (tuple, list))
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            problems.append(f"config.model.{key}={value!r} must be of the kind of its "
                            f"default {default!r} ({m.name}: {setting.doc})")
    return problems
