"""What a checkpoint save costs the training loop.

The command is nme_train/commands/bench_checkpoint.py (also installed as `nme-bench-checkpoint`);
run `python tools/bench_checkpoint.py --help` for its options.
"""

import sys

from nme_train.commands.bench_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
