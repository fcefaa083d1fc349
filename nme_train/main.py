"""Command-line entry point.

    python -m nme_train.main --config=configs/default.py --workdir=/tmp/run
    python -m nme_train.main --config=configs/default.py:mlp --config.batch_size=256 ...

In a multi-process job every process runs the same command; the job's
layout comes from the environment (launch/, nme_train.distributed) or from
--coordinator_address, --num_processes and --process_id.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nme_train import distributed
from nme_train.train.checkpoint import CheckpointError
from nme_train.train.loop import train_and_evaluate
from nme_train.train.metrics import Diverged
from nme_train.validation import ConfigError

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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.ERROR)  # library chatter (TFDS, XLA) hides the progress lines
    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    try:
        if _DRY_RUN.value:
            from nme_train.train.dry_run import dry_run, print_report

            print_report(dry_run(_CONFIG.value))
            return
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, CheckpointError, FileNotFoundError, Diverged) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
