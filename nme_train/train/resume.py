"""Starting a run: resume from the workdir's checkpoints, warm-start, or initialise.

A workdir remembers its config (DIR/config.json). Before anything is
written, a restart checks the fields a resume must keep (seed, data, batch
size, model: rundir.RESUME_FIXED) and compares the shapes of the new train
state with those of the latest checkpoint; if either differs, it stops and
lists the config fields that changed, leaving the workdir untouched. Other
fields (learning rate, regularizers, intervals, ...) may change across a
restart; they are listed and the new values are used. The whole policy for
a workdir is in nme_train.train.rundir.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from nme_train import storage
from nme_train.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    abstract_with_shardings,
    checkpoint_dir,
    describe_error,
    metadata_shapes,
    saved_steps,
    state_path,
    tree_shapes,
)
from nme_train.train.rundir import (
    CONFIG_FILE,
    RESUME_FIXED,
    config_changes,
    describe,
    fixed_changes,
    keep_aside,
    read_json,
)


def _check_shapes(workdir: str, step: int, saved: dict, new: dict,
                  changes: dict[str, tuple[Any, Any]]) -> None:
    if saved == new:
        return
    order = {"params": 0, "model_state": 1}  # parameters first: they say the most
    paths = sorted(set(saved) | set(new), key=lambda p: (order.get(p.split("/")[0], 2), p))
    differing = [f"{p}: {saved.get(p)} -> {new.get(p)}" for p in paths
                 if saved.get(p) != new.get(p)]
    fields = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()] or ["(none recorded)"]
    params_differ = any(p.split("/")[0] in ("params", "model_state") for p in paths
                        if saved.get(p) != new.get(p))
    fix = ("Use a new --workdir, or restore those fields." if params_differ else
           "Use a new --workdir, restore those fields, or start a new run from these "
           "weights (only the optimizer state differs) with --config.init_from=" + workdir)
    raise CheckpointError(
        f"workdir {workdir} holds checkpoints (latest: step {step}) of a train state with "
        f"different shapes, so this config cannot resume it. Config fields that differ "
        f"from the saved config.json:\n    " + "\n    ".join(fields) +
        f"\n  Arrays that differ ({len(differing)}):\n    " + "\n    ".join(differing[:8]) +
        "\n  Nothing was changed. " + fix
    )


_KEPT = ", ".join(f"{f}*" if f.endswith(".") else f for f in RESUME_FIXED)


def saved_changes(workdir: str, config_json: dict) -> dict[str, tuple[Any, Any]]:
    """The config changes since DIR/config.json (empty when there is none)."""
    saved = read_json(os.path.join(workdir, CONFIG_FILE))
    return config_changes(saved, config_json) if saved else {}


def _check_fixed(workdir: str, changes: dict[str, tuple[Any, Any]]) -> None:
    fixed = fixed_changes(changes)
    if fixed:
        raise CheckpointError(
            f"{workdir} holds checkpoints of a run with a different {', '.join(fixed)} "
            f"({describe(fixed)}); a resume keeps {_KEPT}. Nothing was changed. Restore "
            "those fields, use a new --workdir, or start a new run from these weights with "
            f"--config.init_from={workdir}")


class _QuietUnraisable:
    """Silences "Exception ignored in ..." noise from readers of a damaged checkpoint."""

    def __enter__(self):
        self._hook, sys.unraisablehook = sys.unraisablehook, lambda *_: None

    def __exit__(self, *exc):
        gc.collect()  # the readers' abandoned coroutines report when they are collected
        sys.unraisablehook = self._hook


def restore_latest(workdir: str, config: Any, ckpt: Checkpointer, abstract_state: Any
                   ) -> tuple[Any, dict, dict[str, tuple[Any, Any]]] | None:
    """(state, meta, config changes) from the newest checkpoint that can be read, or None.

    `abstract_state` carries the target shapes and shardings (any mesh). A
    change of a field a resume keeps (rundir.RESUME_FIXED) or of the train
    state's shapes raises CheckpointError before anything is written.
    Unreadable checkpoints (corrupt files, a save that never completed) are
    renamed `<step>.unreadable`, with the cause printed, so that the run's
    new saves of those steps can be written: the newest readable one is
    restored, and when none is, the run starts from step 0 (None).
    """
    changes = saved_changes(workdir, json.loads(config.to_json_best_effort()))
    new_shapes = tree_shapes(abstract_state)
    skipped: list[tuple[int, str]] = []
    result = None
    with _QuietUnraisable():
        for step in reversed(ckpt.steps()):
            try:
                saved_shapes = ckpt.saved_shapes(step)
            except Exception as e:  # noqa: BLE001 - unreadable metadata: try the previous one
                skipped.append((step, describe_error(e)))
                continue
            _check_shapes(workdir, step, saved_shapes, new_shapes, changes)
            _check_fixed(workdir, changes)
            try:
                state, meta = ckpt.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - unreadable arrays: try the previous one
                skipped.append((step, describe_error(e)))
                continue
            result = state, meta, changes
            break
    for step, cause in skipped:
        path = os.path.join(ckpt.directory, str(step))
        if jax.process_index() == 0:
            moved = keep_aside(path, "unreadable")
            logging.warning("warning: checkpoint at step %d is unreadable (%s); moved to %s",
                            step, cause, moved)
    if skipped:
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("nme_train: unreadable checkpoints set aside")
        ckpt.steps()  # let the manager forget the renamed steps
        if result is None:
            logging.warning("warning: no readable checkpoint in %s; starting from step 0 (the "
                            "unreadable ones are kept; delete them when you no longer need "
                            "them)", ckpt.directory)
    return result


def _resolve_init_from(path: str) -> tuple[str, int]:
    """(checkpoints dir, step) from a workdir, a checkpoints dir or one step's dir."""
    path = storage.absolute(path)
    match = re.fullmatch(r"(.*)/(\d+)/?", path)
    if match and os.path.basename(match.group(1)) == "checkpoints":
        return match.group(1), int(match.group(2))
    directory = path if os.path.basename(path) == "checkpoints" else checkpoint_dir(path)
    steps = saved_steps(directory)
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
    source = state_path(os.path.join(directory, str(step)))
    try:
        saved = metadata_shapes(ocp.StandardCheckpointer().metadata(source))
    except Exception as e:
        raise CheckpointError(f"config.init_from={init_from!r}: {source} is not a readable "
                              f"checkpoint ({describe_error(e)})") from e
    wanted = tree_shapes(target)
    differing = [f"{p}: {saved.get(p, 'missing')} -> {shape}" for p, shape in wanted.items()
                 if tuple(saved.get(p, ())) != tuple(shape)]
    if differing:
        raise CheckpointError(
            f"config.init_from={init_from!r}: the parameters in {source} do not fit this model "
            f"({len(differing)} arrays differ: {'; '.join(differing[:4])}). init_from needs the "
            "same model fields (widths, depth, classes); change them back or train from scratch")
    try:
        restored = ocp.PyTreeCheckpointer().restore(source, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    except Exception as e:
        raise CheckpointError(
            f"config.init_from={init_from!r}: cannot read the parameters in {source} "
            f"({describe_error(e)})"
        ) from e
    return state.replace(params=restored["params"],
                         model_state=restored["model_state"]), f"{source} (step {step})"
