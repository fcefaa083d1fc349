"""Checkpoints with orbax: asynchronous saves, safe restore, and topology changes.

Layout, in `DIR/checkpoints/<step>/`:
  state/   the TrainState (params, opt_state, model_state, step, rng), as
           orbax/tensorstore arrays; restorable onto any mesh
  meta/metadata
           JSON, readable without JAX: the step, the data position
           (`data_step`, one integer: see nme_train.data.pipeline), the
           metrics at save time and the full config
orbax writes each checkpoint into a temporary directory and renames it when
complete, so a checkpoint killed mid-save is never listed.

Saving is asynchronous. In a single-process job the loop pays only for an
on-device copy of the state (its buffers are donated to the next step): the
copy goes to one background thread, which runs the whole orbax save while
training goes on. In a multi-process job the save must run in the same
order as the training collectives on every process (orbax synchronises the
processes), so it is started from the loop with orbax's own asynchronous
mode, which returns after the device-to-host copy. An error of a save
(disk full, permissions) is raised in the loop at the next save or at the
end, and older checkpoints are left in place.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from nme_train import storage


def _lower_thread_priority() -> None:
    """Lets the OS favour the training threads over the checkpoint writer (Linux)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or the workdir's checkpoints do not fit the config."""


def describe_error(error: BaseException) -> str:
    """One line naming what made a checkpoint unreadable (no raw TensorStore specs)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # the innermost error says the most
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    text = text.split(" See full TensorStore details")[0]
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


# The layout of one checkpoint, DIR/checkpoints/<step>/: orbax's items (see the docstring).
STATE_ITEM = "state"
META_ITEM = "meta"
META_FILE = "metadata"  # meta/metadata: the JSON orbax's JsonCheckpointHandler writes


def checkpoint_dir(workdir: str) -> str:
    return storage.join(storage.absolute(workdir), "checkpoints")


def state_path(checkpoint: str) -> str:
    """The TrainState item of the checkpoint directory `checkpoint` (.../checkpoints/<step>)."""
    return os.path.join(checkpoint, STATE_ITEM)


def read_meta(checkpoint: str) -> dict:
    """The JSON summary of the checkpoint directory `checkpoint`, read without JAX."""
    return json.loads(storage.read_text(os.path.join(checkpoint, META_ITEM, META_FILE)))


def restore_checkpoint(checkpoint: str, target: Any = None) -> tuple[Any, dict]:
    """(state, meta) of the checkpoint directory `checkpoint`, read-only, without a manager:
    the state onto `target`'s shardings (ShapeDtypeStructs), or as saved when None."""
    with ocp.StandardCheckpointer() as checkpointer:  # closed: no threads left behind
        state = checkpointer.restore(state_path(checkpoint), target)
    return state, read_meta(checkpoint)


def saved_steps(directory: str) -> list[int]:
    """Steps of the checkpoints orbax has finished writing in a checkpoints directory
    (a plain integer name with its meta/; set-aside `<step>.unreadable` ones are not),
    read from the file system without a checkpoint manager (tools, warm starts)."""
    return sorted(int(name) for name in storage.listdir(directory)
                  if name.isdigit() and _finished(os.path.join(directory, name)))


# orbax's marker of a finished checkpoint where there is no atomic rename (a bucket)
COMMIT_FILE = "commit_success.txt"


def _finished(checkpoint: str) -> bool:
    """Whether orbax has finished writing the checkpoint directory `checkpoint`: locally
    it renames a complete one into place; in a bucket it writes COMMIT_FILE last."""
    if storage.is_remote(checkpoint):
        return storage.exists(os.path.join(checkpoint, COMMIT_FILE))
    return storage.isdir(os.path.join(checkpoint, META_ITEM))


def save_failure_fix(directory: str) -> str:
    """What to check when a save into `directory` failed: the disk, or the bucket."""
    if storage.is_remote(directory):
        bucket = directory.split("://", 1)[1].split("/", 1)[0]
        return (f"check that bucket {bucket} exists and that this machine's credentials (its "
                "service account, or GOOGLE_APPLICATION_CREDENTIALS) may create and delete "
                "objects in it (roles/storage.objectAdmin), and that no retention policy, "
                "object hold or quota on the bucket refuses the writes")
    return "free disk space or fix the permissions of the workdir"


class Checkpointer:
    """Saves and restores TrainStates in DIR/checkpoints with an orbax CheckpointManager."""

    def __init__(self, workdir: str, max_to_keep: int | None = 3,
                 keep_every_steps: int = 0, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        self._threaded = jax.process_count() == 1
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep if max_to_keep and max_to_keep > 0 else None,
            keep_period=keep_every_steps or None,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=not self._threaded,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                           META_ITEM: ocp.JsonCheckpointHandler()},
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, "checkpoint", initializer=_lower_thread_priority)
        self._pending: concurrent.futures.Future | None = None
        self._closed = False
        self._copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))

    # -- saving ------------------------------------------------------------
    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts saving `state` as checkpoint `step`; returns once a device copy is made."""
        self.check()
        self._check_space(state)
        meta = json.loads(json.dumps(meta))  # a frozen copy: the caller's dicts keep changing
        if self._threaded:
            snapshot = self._copy(state)
            self._pending = self._executor.submit(self._save, step, snapshot, meta, True)
        else:
            try:
                self._save(step, state, meta, wait=False)
            except Exception as e:  # noqa: BLE001 - reported like a failed background save
                self._pending = concurrent.futures.Future()
                self._pending.set_exception(e)
                self.check()

    def _check_space(self, state: Any) -> None:
        """Refuses a save that cannot fit on the disk before orbax starts writing it (a
        bucket has no free-space figure: nothing to check there)."""
        needed = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))
        free = storage.free_bytes(self.directory)
        if free is not None and free < needed * 1.05 + 2**18:
            raise CheckpointError(
                f"not enough free space in {self.directory} for a checkpoint: it needs about "
                f"{needed / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free. Older "
                "checkpoints were left in place; free disk space (or lower "
                "config.checkpoint.max_to_keep), then rerun the same command to resume.")

    def _save(self, step: int, state: Any, meta: dict, wait: bool) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        if wait:
            self._manager.wait_until_finished()

    def check(self) -> None:
        """Raises the error of the previous save, if it failed (after it has finished)."""
        if not self._threaded:
            try:
                self._manager.wait_until_finished()
            except Exception as e:  # noqa: BLE001 - orbax's background write failed
                self._pending = concurrent.futures.Future()
                self._pending.set_exception(e)
        if self._pending is None:
            return
        try:
            self._pending.result()
        except Exception as e:
            raise CheckpointError(
                f"saving a checkpoint into {self.directory} failed: {type(e).__name__}: {e}. "
                f"Older checkpoints were left in place; {save_failure_fix(self.directory)}, "
                "then rerun the same command to resume."
            ) from e
        finally:
            self._pending = None

    def poll(self) -> None:
        """Raises the error of a finished background save at once (cheap: no waiting)."""
        if self._pending is not None and self._pending.done():
            self.check()

    def wait(self) -> None:
        """Blocks until the last save has finished (and raises its error, if any)."""
        self.check()

    def close(self) -> None:
        """Waits for the last save (raising its error) and releases the writer; idempotent."""
        if self._closed:
            return
        try:
            self.check()
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)
            self._manager.close()

    # -- restoring ---------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def saved_shapes(self, step: int) -> dict[str, tuple]:
        """'path' -> shape of each array of checkpoint `step` (from its metadata only)."""
        return metadata_shapes(self._manager.item_metadata(step)[STATE_ITEM])

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Checkpoint `step`, placed with the shardings of `abstract_state` (any mesh)."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                    meta=ocp.args.JsonRestore()),
        )
        return restored[STATE_ITEM], restored[META_ITEM]


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def metadata_shapes(metadata: Any) -> dict[str, tuple]:
    """tree_shapes of orbax's metadata of a saved tree (its layout differs across versions)."""
    for attr in ("item_metadata", "tree"):
        inner = getattr(metadata, attr, None)
        if inner is not None:
            metadata = inner
    return tree_shapes(getattr(metadata, "tree", metadata))


def tree_shapes(tree: Any) -> dict[str, tuple]:
    """'a/b/0/c' -> shape for every array-like leaf; namedtuples and dicts spell alike."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in flat
            if hasattr(leaf, "shape")}


def open_checkpointer(workdir: str, checkpoint_config: Any) -> Checkpointer:
    """The run's Checkpointer, or a CheckpointError saying why DIR/checkpoints is unusable."""
    directory = checkpoint_dir(workdir)
    try:
        if jax.process_index() == 0:  # fail now, not at the first save after hours of training
            storage.makedirs(directory)
            probe = os.path.join(directory, f".write_test.{os.getpid()}")
            storage.write_text(probe, "ok")
            storage.remove(probe)
        return Checkpointer(workdir, checkpoint_config.max_to_keep,
                            checkpoint_config.keep_every_steps)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot use {directory} for checkpoints: {type(e).__name__}: {e}. "
            "Check that the workdir is a writable directory with free space, or pass another "
            "--workdir."
        ) from e


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings: what a restore should produce."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_state, shardings,
    )


def load_checkpoint(workdir: str, step: int | None = None) -> tuple[dict, dict]:
    """(state as a dict of arrays, meta) of a run's checkpoint, without building the trainer.

    For notebooks and tools: `state["params"]` holds the parameters as a
    nested dict; `meta` is the JSON summary (step, metrics, config). The
    newest checkpoint is read when `step` is None.
    """
    directory = checkpoint_dir(workdir)
    if step is None:
        steps = saved_steps(directory)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        step = steps[-1]
    return restore_checkpoint(os.path.join(directory, str(step)))
