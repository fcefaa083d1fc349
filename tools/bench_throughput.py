"""Training throughput (images/s) and FLOP utilisation of the step with each regularizer.

The command is nme_train/commands/bench_throughput.py (also installed as `nme-bench-throughput`);
run `python tools/bench_throughput.py --help` for its options.
"""

import sys

from nme_train.commands.bench_throughput import main

if __name__ == "__main__":
    sys.exit(main())
