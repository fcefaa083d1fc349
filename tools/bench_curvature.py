"""Cost of the curvature products and of a Lanczos run, as ratios to one gradient.

The command is nme_train/commands/bench_curvature.py (also installed as `nme-bench-curvature`);
run `python tools/bench_curvature.py --help` for its options.
"""

import sys

from nme_train.commands.bench_curvature import main

if __name__ == "__main__":
    sys.exit(main())
