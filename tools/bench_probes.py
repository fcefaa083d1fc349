"""What curvature probes cost a training run, and how accurate their top eigenvalues are.

The command is nme_train/commands/bench_probes.py (also installed as `nme-bench-probes`);
run `python tools/bench_probes.py --help` for its options.
"""

import sys

from nme_train.commands.bench_probes import main

if __name__ == "__main__":
    sys.exit(main())
