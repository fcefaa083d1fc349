"""Starting a run: resume from the workdir's checkpoints, warm-start, or initialise.

A workdir remembers its config (DIR/config.json). Before anything is
written, a restart compares the shapes of the new train state with those
of the latest checkpoint; if they differ, it stops and lists the config
fields that changed, leaving the workdir untouched. Fields that do not
change shapes (learning rate, intervals, ...) may change across a restart;
they are listed and the new values are used.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp

from nme_train.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    abstract_with_shardings,
    checkpoint_dir,
    tree_shapes,
)

log = logging.getLogger(__name__)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tuple(tree) if isinstance(tree, list) else tree}


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """field -> (old value, new value) for every field that differs."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def saved_config(workdir: str) -> dict | None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check_shapes(workdir: str, step: int, saved: dict, new: dict,
                  changes: dict[str, tuple[Any, Any]]) -> None:
    if saved == new:
        return
    order = {"params": 0, "model_state": 1}  # parameters first: they say the most
    paths = sorted(set(saved) | set(new), key=lambda p: (order.get(p.split("/")[0], 2), p))
    differing = [f"{p}: {saved.get(p)} -> {new.get(p)}" for p in paths
                 if saved.get(p) != new.get(p)]
    fields = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()] or ["(none recorded)"]
    raise CheckpointError(
        f"workdir {workdir} holds checkpoints (latest: step {step}) of a train state with "
        f"different shapes, so this config cannot resume it. Config fields that differ "
        f"from the saved config.json:\n    " + "\n    ".join(fields) +
        f"\n  Arrays that differ ({len(differing)}):\n    " + "\n    ".join(differing[:8]) +
        "\n  Nothing was changed. Use a new --workdir, restore those fields, or start a new "
        "run from these weights with --config.init_from=" + workdir
    )


def _skip(ckpt: Checkpointer, step: int, error: Exception) -> None:
    first_line = str(error).splitlines()[0] if str(error) else ""
    log.warning("checkpoint at step %d in %s is unreadable (%s: %s)", step, ckpt.directory,
                type(error).__name__, first_line)
    print(f"warning: skipped unreadable checkpoint at step {step} in {ckpt.directory} "
          f"({type(error).__name__}); trying the previous one", flush=True)


def restore_latest(workdir: str, config: Any, ckpt: Checkpointer, abstract_state: Any
                   ) -> tuple[Any, dict, dict[str, tuple[Any, Any]]] | None:
    """(state, meta, config changes) from the newest checkpoint that can be read, or None.

    `abstract_state` carries the target shapes and shardings (any mesh).
    Unreadable checkpoints (corrupt files, a save that never completed) are
    skipped with a warning naming the step, and once an older one restores
    they are renamed to `<step>.unreadable` (kept, but out of the way of the
    new saves of those steps). A readable one whose shapes do not fit raises
    CheckpointError before anything is written.
    """
    old = saved_config(workdir) or {}
    changes = config_changes(old, json.loads(config.to_json_best_effort()))
    new_shapes = tree_shapes(abstract_state)
    skipped: list[int] = []
    for step in reversed(ckpt.steps()):
        try:
            saved_shapes = ckpt.saved_shapes(step)
        except Exception as e:  # noqa: BLE001 - unreadable metadata: try the previous one
            _skip(ckpt, step, e)
            skipped.append(step)
            continue
        _check_shapes(workdir, step, saved_shapes, new_shapes, changes)
        try:
            state, meta = ckpt.restore(step, abstract_state)
        except Exception as e:  # noqa: BLE001 - unreadable arrays: try the previous one
            _skip(ckpt, step, e)
            skipped.append(step)
            continue
        if jax.process_index() == 0:
            for bad in skipped:
                path = os.path.join(ckpt.directory, str(bad))
                os.replace(path, f"{path}.unreadable")
        ckpt.steps()  # let the manager forget the renamed steps
        return state, meta, changes
    return None


def _resolve_init_from(path: str) -> tuple[str, int]:
    """(checkpoints dir, step) from a workdir, a checkpoints dir or one step's dir."""
    path = os.path.abspath(path)
    match = re.fullmatch(r"(.*)/(\d+)/?", path)
    if match and os.path.basename(match.group(1)) == "checkpoints":
        return match.group(1), int(match.group(2))
    directory = path if os.path.basename(path) == "checkpoints" else checkpoint_dir(path)
    steps = sorted(int(s) for s in os.listdir(directory) if s.isdigit()) \
        if os.path.isdir(directory) else []
    if not steps:
        raise CheckpointError(f"config.init_from={path!r}: no checkpoint found in {directory}")
    return directory, steps[-1]


def warm_start(init_from: str, state: Any, state_sharding: Any) -> tuple[Any, str]:
    """`state` with params and model state read from another run; optimizer left fresh."""
    directory, step = _resolve_init_from(init_from)
    target = abstract_with_shardings(
        {"params": state.params, "model_state": state.model_state},
        {"params": state_sharding.params, "model_state": state_sharding.model_state},
    )
    source = os.path.join(directory, str(step), "state")
    try:
        restored = ocp.PyTreeCheckpointer().restore(source, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    except Exception as e:  # noqa: BLE001 - shapes or files that do not fit
        raise CheckpointError(
            f"config.init_from: cannot read params of the model from {source}: "
            f"{type(e).__name__}: {str(e)[:400]}"
        ) from e
    return state.replace(params=restored["params"],
                         model_state=restored["model_state"]), f"{source} (step {step})"
