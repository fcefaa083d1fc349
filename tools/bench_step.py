"""Times the framework's training step against a minimal hand-written flax + optax step.

The command is nme_train/commands/bench_step.py (also installed as `nme-bench-step`);
run `python tools/bench_step.py --help` for its options.
"""

import sys

from nme_train.commands.bench_step import main

if __name__ == "__main__":
    sys.exit(main())
