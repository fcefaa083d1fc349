"""Components from outside the package: the modules `config.modules` names.

A user's module registers its components when it is imported (a model with
`register_model`, an activation, a regularizer, a curvature operator kind, a probe figure,
a dataset, an optimizer: docs/extending.md). `config.modules` names such modules, as
big_vision's `pp_modules` does: dotted module names importable here, or paths to .py
files. The trainer, the dry run, the sweep and the offline prober import them before
they build or validate anything, and config.json keeps them, so a run is probed, resumed
or swept with the same components it trained with. `absolute_paths` makes file paths absolute
(relative to the working directory), as the trainer writes them into config.json.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType


def is_path(entry: str) -> bool:
    return entry.endswith(".py") or os.sep in entry


def absolute_paths(entries: Sequence[str]) -> tuple[str, ...]:
    """The entries with each file path made absolute (module names unchanged)."""
    return tuple(os.path.abspath(e) if is_path(e) else e for e in entries)


def import_modules(entries: Sequence[str], field: str = "config.modules") -> list[ModuleType]:
    """Imports each entry once per process (a module name, or a .py file by its path);
    ValueError with one line naming the entry and the cause when one fails."""
    if isinstance(entries, str):
        raise ValueError(f"{field}={entries!r} must be a list of module names or .py paths, "
                         f"e.g. ({entries!r},)")
    modules = []
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"{field}: {entry!r} is not a module name or a .py path")
        try:
            modules.append(_import_file(entry) if is_path(entry)
                           else importlib.import_module(entry))
        except Exception as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ValueError(f"{field}: importing {entry!r} failed: {type(e).__name__}"
                             f"{': ' + detail if detail else ''}") from e
    return modules


def _import_file(path: str) -> ModuleType:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file {path}")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"nme_ext_{stem}_{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
