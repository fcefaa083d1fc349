"""The regularizer registry: each module registers its transform factory, its config check
and a small example setting (the tests run every registered regularizer with it).

    register_regularizer("sam", sam, check=check_sam, example={"rho": 0.05})

`config.regularizers` is a list of (name, {kwargs}) applied in order, innermost first;
`from_config` builds their chain. The validator checks each entry generically (a known
name; keyword arguments the factory takes; numbers where it annotates numbers; the
factory's own ValueErrors; the twins of the network it `needs`, for the model's
activation) and then runs the entry's `check(kwargs, config, num_devices) -> [problem,
...]` for what depends on the rest of the config (one line per problem, naming the field
and the fix).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from nme_train.registry import Registry
from nme_train.regularizers.objective import Transform, chain


@dataclasses.dataclass(frozen=True)
class RegularizerEntry:
    factory: Callable[..., Transform]  # (**kwargs) -> objective transform
    check: Callable[[dict, Any, int], list[str]]  # (kwargs, config, devices) -> problems
    example: dict[str, Any]  # kwargs for the tests
    # kwargs -> the Objective's twins of the network it uses ("ablated_apply_fn"): the
    # validator refuses the entry for a model without them, in one line
    needs: Callable[[dict], tuple[str, ...]] = lambda kwargs: ()


REGULARIZERS: Registry[RegularizerEntry] = Registry("regularizer")


def register_regularizer(name: str, factory: Callable[..., Transform],
                         check: Callable[[dict, Any, int], list[str]] = lambda kw, c, n: [],
                         example: dict[str, Any] | None = None,
                         needs: Callable[[dict], tuple[str, ...]] = lambda kwargs: (),
                         replace: bool = False) -> Callable[..., Transform]:
    """Registers `factory(**kwargs) -> Transform` as regularizer `name`; returns factory."""
    REGULARIZERS.register(name, RegularizerEntry(factory, check, dict(example or {}), needs),
                          replace=replace)
    return factory


def from_config(entries: Any) -> Transform:
    """The chain of `config.regularizers`: a list of (name, {kwargs}) applied in order."""
    return chain(*(REGULARIZERS[name].factory(**dict(kwargs)) for name, kwargs in entries or ()))
