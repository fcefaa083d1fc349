"""One logging path: absl logging, shown as plain lines on stdout.

The package reports through `absl.logging` only: `info` for the run's
header, the progress and evaluation lines, probe summaries and the final
line; `warning` for settings that do nothing and checkpoints set aside;
`error` for a hung process. `setup()` (called by the trainer, the command
line and the tools; idempotent) shows those records as they were written,
one plain line each, on the current `sys.stdout`, and hides the libraries'
own absl records (TFDS, orbax, grain) unless they are errors or `debug` is
set. A program that configures absl itself (app.run with --logtostderr,
a log directory) can skip `setup()`: the records are ordinary absl records.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import logging

_HANDLER: _Console | None = None
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_OURS = (_PACKAGE + os.sep, os.path.join(os.path.dirname(_PACKAGE), "tools") + os.sep)


class _Console(std_logging.StreamHandler):
    """Plain lines on whatever `sys.stdout` is at each record (redirections, captures)."""

    def __init__(self, debug: bool):
        super().__init__(sys.stdout)
        self.debug = debug
        self.setFormatter(std_logging.Formatter("%(message)s"))

    def emit(self, record: std_logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)

    def filter(self, record: std_logging.LogRecord) -> bool:
        path = os.path.abspath(record.pathname)
        if path.startswith(_OURS):
            return True
        # a library's errors, except orbax's (a failed save is reported once, by the trainer)
        return self.debug or (record.levelno >= std_logging.ERROR
                              and f"{os.sep}orbax{os.sep}" not in path)


def setup(debug: bool = False) -> None:
    """Routes absl's records to plain stdout lines (see the module docstring)."""
    global _HANDLER
    absl_logger = std_logging.getLogger("absl")
    if _HANDLER is None:
        _HANDLER = _Console(debug)
        absl_logger.addHandler(_HANDLER)
    _HANDLER.debug = _HANDLER.debug or debug
    absl_logger.propagate = False  # not a second time through absl's handler on the root
    # other loggers (jax's backend probing, ...) reach the root: errors only, unless debug
    logging.set_verbosity(logging.DEBUG if debug else logging.ERROR)
    absl_logger.setLevel(std_logging.DEBUG if debug else std_logging.INFO)
