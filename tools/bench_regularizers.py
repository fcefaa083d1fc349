"""Times one training step with each regularizer against the plain step, in one process.

The command is nme_train/commands/bench_regularizers.py
(also installed as `nme-bench-regularizers`);
run `python tools/bench_regularizers.py --help` for its options.
"""

import sys

from nme_train.commands.bench_regularizers import main

if __name__ == "__main__":
    sys.exit(main())
