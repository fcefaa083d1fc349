"""Test support: a deliberately slow input pipeline for trainers started as processes.

With this directory on PYTHONPATH and NME_TEST_INPUT_DELAY=SECONDS set, every training
batch of `nme_train.train.loop` arrives SECONDS late, so that a short run lasts long
enough for a scheduler's signal to reach it mid-training (tests/test_slurm.py); with
NME_TEST_INPUT_DELAY_UNTIL=PATH as well, only until the file PATH exists (the test has
done what needed a running job, and the run may finish at full speed). Python imports
`sitecustomize` at start-up; nothing changes without the variable.
"""

import os

_DELAY = float(os.environ.get("NME_TEST_INPUT_DELAY", "0") or 0)
if _DELAY > 0:
    import time

    # this import takes seconds, before nme_train.main's first line: hold a scheduler's
    # SIGTERM from here on, as nme_train.main does from its first line
    from nme_train.train import preemption as _preemption

    _preemption.hold_signals()
    import nme_train.train.loop as _loop

    _batches = _loop.train_batches
    _UNTIL = os.environ.get("NME_TEST_INPUT_DELAY_UNTIL")

    def _slow_batches(*args, **kwargs):
        late = True
        for batch in _batches(*args, **kwargs):
            late = late and not (_UNTIL and os.path.exists(_UNTIL))
            if late:
                time.sleep(_DELAY)
            yield batch

    _loop.train_batches = _slow_batches
