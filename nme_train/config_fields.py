"""Dotted config fields: listing them, setting them, naming the nearest to a typo.

One home for `--config.x.y=value` style paths, used by the command line,
the sweep grids (nme_train.sweeps.grids) and nme-probe's `--set`.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Sequence
from typing import Any


def leaf_fields(config: Any, prefix: str = "") -> list[str]:
    """Dotted names of every field of a ConfigDict (groups included)."""
    names = []
    for key in config.keys():
        value = config[key]
        names.append(prefix + key)
        if hasattr(value, "keys") and hasattr(value, "unlocked"):
            names.extend(leaf_fields(value, f"{prefix}{key}."))
    return names


def unknown_field(name: str, fields: Sequence[str], what: str = "config") -> str:
    """'no field X; did you mean ...' with the nearest valid names."""
    leaves = [f for f in fields if not any(g.startswith(f + ".") for g in fields)]
    last = name.rsplit(".", 1)[-1]
    initials = [f for f in leaves  # "lr" for learning_rate
                if "".join(w[0] for w in f.rsplit(".", 1)[-1].split("_") if w) == last]
    near = initials + [f for f in difflib.get_close_matches(name, leaves, n=4, cutoff=0.5)
                       if f not in initials]
    near = near[:4]
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    if not near:
        near = [f for f in leaves if parent and f.startswith(parent + ".")
                and "." not in f[len(parent) + 1:]][:8]
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return f"{what} has no field {name!r}{hint} (all fields: nme_train/base_config.py)"


def set_fields(config: Any, overrides: Iterable[tuple[str, Any]], what: str = "config") -> Any:
    """Sets dotted `field` paths of `config` in place and returns it.

    An unknown field raises KeyError with the message of `unknown_field`.
    """
    for path, value in overrides:
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            if part not in node or not hasattr(node[part], "keys"):
                raise KeyError(unknown_field(path, leaf_fields(config), what))
            node = node[part]
        if leaf not in node:
            raise KeyError(unknown_field(path, leaf_fields(config), what))
        node[leaf] = value
    return config


def parse_assignments(items: Iterable[str]) -> list[tuple[str, Any]]:
    """`FIELD=VALUE` strings (as given to --set) -> (field, value); values are Python
    literals where they parse as one ("40", "(8, 16)", "True"), else the text."""
    pairs = []
    for item in items:
        key, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        pairs.append((key, value))
    return pairs
