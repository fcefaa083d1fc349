"""Command-line entry point.

    python -m nme_train.main --config=configs/default.py --workdir=/tmp/run
    python -m nme_train.main --config=configs/default.py:mlp --config.batch_size=256 ...

In a multi-process job every process runs the same command; the job's
layout comes from the environment (launch/, nme_train.distributed) or from
--coordinator_address, --num_processes and --process_id.

Exit codes: 0 finished (or nothing to do); 1 an `error:` line (bad config,
workdir policy, ...); 3 the step watchdog; 75 stopped by SIGTERM/SIGINT
before the last step, after saving a checkpoint (run the same command to
resume; nme_train.train.preemption).
"""

from __future__ import annotations

import gc
import sys

# The imports below create some 160,000 objects that live as long as the process; the
# collector's passes over them while they load cost ~0.2 s of CPU (of ~1.2 s): it waits.
if _collecting := gc.isenabled():
    gc.disable()

if __name__ == "__main__":  # the imports below take seconds: hold a SIGTERM meanwhile
    from nme_train.train import preemption

    preemption.hold_signals()

from absl import app, flags
from ml_collections import config_flags

from nme_train import cli, distributed, extensions, logs
from nme_train.train.checkpoint import CheckpointError
from nme_train.train.loop import train_and_evaluate
from nme_train.train.metrics import Diverged
from nme_train.train.preemption import PREEMPTED_EXIT_CODE
from nme_train.train.rundir import RunDirError
from nme_train.validation import ConfigError

if _collecting:
    gc.enable()

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config(); `file.py:arg` passes arg.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, logs and checkpoints.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (default: $NME_COORDINATOR or the "
                                   "scheduler's environment)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the job")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "compile the training and probe steps for the "
                             "devices present, print FLOPs and memory, read no data, train "
                             "nothing")
_MEMORY_GIB = flags.DEFINE_float("dry_run_memory_gib", None,
                                 "with --dry_run: also find the smallest "
                                 "config.grad_accum_steps whose training step fits this many "
                                 "GiB per device")
_EXTEND = flags.DEFINE_bool("extend", False, "continue a finished run to a larger "
                            "num_train_steps / num_epochs (its final.json is kept aside)")
flags.DEFINE_bool("debug", False, "show tracebacks instead of one `error:` line")
flags.mark_flags_as_required(["config", "workdir"])

USER_ERRORS = (ConfigError, CheckpointError, RunDirError, FileNotFoundError, Diverged)


def _exit_error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config-file and flag mistakes as one `error:` line."""
    debug = cli.DEBUG_FLAG in argv
    problem = cli.diagnose_config_flags(argv)
    if problem and not debug:
        _exit_error(problem)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        if debug:
            raise
        _exit_error(f"{e}; see --helpfull for the flags")
    return []


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _exit_error(f"unexpected arguments: {argv[1:]}; flags take the form --name=value")
    logs.setup(debug=flags.FLAGS.debug)  # plain lines; library chatter hidden unless --debug

    def run() -> dict | None:
        try:
            distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        except ValueError as e:
            _exit_error(str(e))
        if _DRY_RUN.value:
            from nme_train.train.dry_run import dry_run, print_report

            print_report(dry_run(_CONFIG.value, memory_gib=_MEMORY_GIB.value))
            return None
        config = _CONFIG.value
        with config.unlocked():  # a user's module by path: found from any directory later
            config.modules = extensions.absolute_paths(config.get("modules", ()))
        return train_and_evaluate(config, _WORKDIR.value, extend=_EXTEND.value)

    result = cli.run_with_errors(run, USER_ERRORS)
    if result and result.get("preempted"):  # saved, not finished: a scheduler restarts it
        sys.exit(PREEMPTED_EXIT_CODE)


def run() -> None:
    """The `nme-train` command (same as `python -m nme_train.main`)."""
    # The modules' objects leave the collector's generations: its passes during training
    # (and compiling) scan only what came after.
    gc.freeze()
    try:
        app.run(main, flags_parser=parse_flags)
    finally:
        # The process ends here, its outputs closed (checkpoints, metrics, final.json). The
        # collector's passes over every object during the interpreter's teardown cost about
        # 0.5 s of CPU per process (a sweep's runs, each process of a job); frozen objects
        # are left to the exit.
        gc.freeze()


if __name__ == "__main__":
    run()
