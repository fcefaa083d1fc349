"""Components by name: one small helper behind every registry of the project.

    MODELS = Registry("model", "config.model.name")
    MODELS.register("cnn", ModelEntry(...))
    MODELS["cnn"]                        # the entry; an unknown name is one clear line
    sorted(MODELS), "cnn" in MODELS      # a read-only mapping, in registration order

Registries: models (nme_train.models.registry.MODELS), activations
(models.activations.ACTIVATIONS), regularizers (regularizers.REGULARIZERS), curvature
operator kinds (curvature.operators.OPERATORS), probe figures (curvature.figures.FIGURES),
datasets (data.datasets.DATASETS) and optimizers (optim.OPTIMIZERS). A component from
outside the package registers itself when its module is imported: a config names such
modules in `config.modules` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name no component of the registry has; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """Entries of one kind of component by name, in registration order."""

    def __init__(self, kind: str, field: str | None = None):
        self.kind = kind  # "model", "regularizer", ...
        self.field = field  # the config field that names one ("config.model.name"), if any
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False,
                 after: str | None = None) -> T:
        """Adds `entry` under `name` (at the end, or right after `after`); a name already
        taken is an error unless `replace` (a user's module may replace a component)."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty name, not {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is already registered; pick "
                             "another name, or pass replace=True to replace it")
        if after is None:
            self._entries[name] = entry
            return entry
        if after not in self._entries:
            raise UnknownName(self.unknown(after))
        items = [(k, v) for k, v in self._entries.items() if k != name]
        at = [k for k, _ in items].index(after) + 1
        self._entries = dict(items[:at] + [(name, entry)] + items[at:])
        return entry

    def decorator(self, name: str, make=lambda fn: fn, **options):
        """`@REGISTRY.decorator(name)` registers `make(fn)` (default: fn itself), returns fn."""
        def register(fn):
            self.register(name, make(fn), **options)
            return fn
        return register

    def unknown(self, name: object) -> str:
        where = f"{self.field}={name!r}" if self.field else f"unknown {self.kind} {name!r}"
        verb = " is not known" if self.field else ""
        return f"{where}{verb}; choose one of {sorted(self._entries)}"

    def problem(self, name: object) -> str | None:
        """The one-line problem of naming `name` (None when it is registered)."""
        return None if isinstance(name, str) and name in self._entries else self.unknown(name)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownName(self.unknown(name)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def unregister(self, name: str) -> T:
        """Removes `name` (tests that register a component undo it with this)."""
        return self._entries.pop(name)

    def snapshot(self) -> dict[str, T]:
        """The entries now, for `restore` (tests that register components)."""
        return dict(self._entries)

    def restore(self, snapshot: dict[str, T]) -> None:
        self._entries = dict(snapshot)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {list(self._entries)})"
