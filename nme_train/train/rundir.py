"""What a run directory holds, and the policy for running a command on one again.

Files (written by process 0):
  config.json          the config of the latest start
  metrics.jsonl        one line per log interval (nme_train.train.metrics)
  probes.jsonl         curvature probe records (nme_train.train.probing)
  checkpoints/<step>/  orbax checkpoints (nme_train.train.checkpoint)
  final.json           written once the run has finished: its final metrics
  diverged.json        written when the training loss became NaN/inf
  writer.lock          held while a trainer runs (nme_train.train.lock)
  machines.jsonl       one line per start by nme-sweep: host, CPU, jax version

The policy (docs/checkpoints.md, "The workdir policy"):

- A finished run (final.json) is never trained again or rewritten by a
  rerun: the same command prints "nothing to do"; a config that differs is
  refused, naming the fields; `--extend` continues it to a larger step count
  (final.json is kept as final.step<N>.json).
- A run with checkpoints resumes from the newest readable one. A resume
  accepts changes that keep what the checkpoint means: not the seed, the
  training data, the batch size or the model (RESUME_FIXED), and not the
  shapes of the train state. init_from is ignored on a resume.
- Unreadable checkpoints are set aside as checkpoints/<step>.unreadable,
  with the cause printed; when none is readable the run starts from step 0
  (the metrics of the lost steps go to metrics.discarded.jsonl).
- A diverged run (diverged.json) keeps its checkpoints up to the last sane
  one (see `last_sane_checkpoint`); later ones are set aside as
  checkpoints/<step>.diverged at the divergence. Rerunning it with the same
  config is refused (it would diverge again at the same step); with a
  changed config it resumes from that last sane checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any

from nme_train import storage

FINAL_FILE = "final.json"  # written by the trainer when a run has finished
DIVERGED_FILE = "diverged.json"  # written by the trainer when the training loss became NaN/inf
CONFIG_FILE = "config.json"
MACHINES_FILE = "machines.jsonl"  # where a sweep started the run, one line per start

# Config fields a resume must keep: they define what the checkpoint is a
# state of (the data order derives from seed and batch size). A changed
# shape is refused separately (nme_train.train.resume).
RESUME_FIXED = ("seed", "batch_size", "data.name", "data.train_split", "model.")
# Fields that do not change a run's results (where and how it runs, how often it reports):
# a finished run rerun with only these changed has nothing to do.
IGNORED_ON_RERUN = ("data.data_dir", "data.num_threads", "data.prefetch", "data.num_workers",
                    "data.cache", "watchdog_seconds", "init_from", "mesh.", "sharding.",
                    "checkpoint.", "log_every_steps", "eval_every_steps", "eval_batch_size",
                    "profile.")
# A checkpoint is sane when the training loss at its parameters is finite and
# at most this multiple of the run's first loss (a run that has exploded has
# finite but huge losses for a few steps before the NaN).
SANE_LOSS_FACTOR = 10.0


class RunDirError(RuntimeError):
    """The workdir's state does not allow this command; the message says what to do."""


def read_json(path: str) -> dict | None:
    """The JSON object in `path` (local or gs://), or None when it is missing or unreadable."""
    try:
        return json.loads(storage.read_text(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file (metrics, probes, sweeps); [] when it is missing."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_machines(workdir: str) -> list[dict]:
    """The machines a sweep started the run on (DIR/machines.jsonl), oldest first."""
    return read_jsonl(os.path.join(workdir, MACHINES_FILE))


def machine_key(record: dict) -> str:
    """What makes two machines' float results comparable: CPU model and instruction set."""
    return f"{record.get('cpu', '?')}/{record.get('cpu_flags_sha256', '?')}"


def read_final(workdir: str) -> dict | None:
    """The finished run's final metrics (DIR/final.json), or None when not finished."""
    return read_json(os.path.join(workdir, FINAL_FILE))


def read_diverged(workdir: str) -> dict | None:
    """{"step", "loss", "message", "last_sane_checkpoint", ...} of a diverged run, or None."""
    return read_json(os.path.join(workdir, DIVERGED_FILE))


def write_json_atomic(path: str, payload: Any) -> None:
    """Writes a marker or record whole: readers see it complete or not at all."""
    storage.write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def keep_aside(path: str, suffix: str) -> str:
    """Renames `path` to `path.suffix` (`name.suffix.json` for a JSON file; `.N` added when
    taken) and returns the new name. In a bucket: copied, then deleted."""
    stem, ext = (path[:-5], ".json") if path.endswith(".json") else (path, "")
    target, n = f"{stem}.{suffix}{ext}", 1
    while storage.exists(target):
        target, n = f"{stem}.{suffix}.{n}{ext}", n + 1
    storage.move(path, target)
    return target


def _fields(config_json: dict) -> dict[str, Any]:
    """Dotted field -> value (lists as tuples, as the config holds them)."""
    # imported here: nme-sweep reads this module without importing jax
    from flax.traverse_util import flatten_dict

    return {k: tuple(v) if isinstance(v, list) else v
            for k, v in flatten_dict(config_json, sep=".").items()}


def upgrade_saved_config(saved: dict) -> dict:
    """A config.json of an earlier version in today's fields: a wide_resnet's widen factor
    was config.model.width, which is now resnet's alone (config.model.widen_factor)."""
    model = saved.get("model") or {}
    if model.get("name") == "wide_resnet" and "widen_factor" not in model and "width" in model:
        from nme_train.base_config import base_config

        model = {**model, "widen_factor": model["width"], "width": base_config().model.width}
        saved = {**saved, "model": model}
    return saved


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """field -> (old value, new value) for every field that differs.

    A field the old config lacks (added to base_config.py since that run was made) at
    its default value is no change: the default is what the older code did; `old` is
    read in today's fields first (upgrade_saved_config)."""
    from nme_train.base_config import base_config

    a, b = _fields(upgrade_saved_config(old)), _fields(new)
    defaults = _fields(json.loads(base_config().to_json_best_effort()))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
            and not (k not in a and k in defaults and b.get(k) == defaults[k])}


def _matches(field: str, patterns: Iterable[str]) -> bool:
    return any(field == p or (p.endswith(".") and field.startswith(p)) for p in patterns)


def meaningful(changes: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """The changes that alter the run (not where it reads data from or how it reports)."""
    return {k: v for k, v in changes.items() if not _matches(k, IGNORED_ON_RERUN)}


def fixed_changes(changes: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """The changes a resume refuses (RESUME_FIXED), except the model's computation dtype."""
    return {k: v for k, v in changes.items()
            if _matches(k, RESUME_FIXED) and k not in ("model.dtype",)}


def describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


def check_workdir(workdir: str) -> None:
    """RunDirError naming the fix when the workdir cannot be used: an unsupported URL
    scheme, or a bucket this machine cannot reach or write."""
    try:
        storage.check_reachable(workdir, "--workdir")
    except storage.StorageError as e:
        raise RunDirError(str(e)) from None


def check_rerun(workdir: str, config_json: dict, total_steps: int, extend: bool) -> str | None:
    """Applies the policy for a finished or diverged run before anything is built.

    Returns a "nothing to do" message when the finished run matches the
    command, None when the run may (re)start, and raises RunDirError with
    the fix otherwise. Writes nothing.
    """
    check_workdir(workdir)
    saved = read_json(os.path.join(workdir, CONFIG_FILE)) or {}
    changes = meaningful(config_changes(saved, config_json)) if saved else {}
    final = read_final(workdir)
    if final is not None:
        done = int(final.get("step", 0))
        if extend:
            if total_steps <= done:
                raise RunDirError(
                    f"--extend: the run in {workdir} finished at step {done}, and this config "
                    f"trains {total_steps} steps; raise config.num_train_steps (or "
                    "config.num_epochs) above that to continue it")
            fixed = fixed_changes(changes)
            if fixed:
                raise RunDirError(f"--extend cannot change {describe(fixed)} of the run in "
                                  f"{workdir}; use a new --workdir")
            return None
        length = {k: v for k, v in changes.items() if k in ("num_train_steps", "num_epochs")}
        others = {k: v for k, v in changes.items() if k not in length}
        if not changes and total_steps == done:
            accuracy = final.get("eval/accuracy")
            acc = f", eval accuracy {accuracy:.4f}" if isinstance(accuracy, float) else ""
            return (f"nothing to do: {workdir} holds a finished run (step {done}{acc}; "
                    f"{FINAL_FILE}). To train it further, raise config.num_train_steps or "
                    "config.num_epochs and pass --extend")
        hint = ("pass --extend to continue it to step "
                f"{total_steps}" if total_steps > done and not others
                else "use a new --workdir for a run with this config")
        what = describe(changes) if changes else f"{done} steps -> {total_steps}"
        raise RunDirError(f"{workdir} holds a finished run (step {done}; {FINAL_FILE}) and "
                          f"this config differs from it ({what}); nothing was changed. "
                          f"To keep its results, {hint}")
    diverged = read_diverged(workdir)
    if diverged is not None and not changes:
        anchor = diverged.get("last_sane_checkpoint")
        start = f"step {anchor}" if anchor is not None else "step 0"
        raise RunDirError(
            f"the run in {workdir} diverged at step {diverged.get('step')} with this config "
            f"({DIVERGED_FILE}); rerunning it unchanged would diverge again. Change the "
            "config (e.g. lower --config.optimizer.learning_rate, or set "
            f"--config.optimizer.grad_clip_norm) to resume from {start}, or use a new --workdir")
    return None


class CheckpointHealth:
    """Tells which of this process's checkpoints were followed by a sane step.

    Checkpoint c holds the parameters after step c; the loss of step c+1 is
    the loss at those parameters. `saved(c)` and `observe(step, loss)` build
    that record; `last_sane(steps, diverged_at)` picks the newest checkpoint
    whose next loss was finite and at most SANE_LOSS_FACTOR x the run's first
    loss. Checkpoints older than this process's start were followed by
    finite steps in the process that wrote them (or it would have set them
    aside), and are trusted.
    """

    def __init__(self, start_step: int, first_loss: float | None):
        self.start_step = start_step
        self.first_loss = first_loss
        self._saved: set[int] = {start_step} if start_step else set()
        self.next_loss: dict[int, float] = {}

    def saved(self, step: int) -> None:
        self._saved.add(step)

    def observe(self, step: int, loss: float) -> None:
        """Records the (finite) training loss of `step`."""
        if self.first_loss is None:
            self.first_loss = loss
        if step - 1 in self._saved:
            self.next_loss[step - 1] = loss

    def sane(self, step: int) -> bool:
        if step < self.start_step:
            return True
        loss = self.next_loss.get(step)
        if loss is None or not math.isfinite(loss):
            return False
        return self.first_loss is None or loss <= SANE_LOSS_FACTOR * max(self.first_loss, 1e-3)

    def last_sane(self, steps: Iterable[int]) -> int | None:
        good = [s for s in steps if self.sane(s)]
        return max(good) if good else None
