"""Measures the ImageNet input pipeline: images/s per process and per CPU core.

The command is nme_train/commands/bench_pipeline.py (also installed as `nme-bench-pipeline`);
run `python tools/bench_pipeline.py --help` for its options.
"""

import sys

from nme_train.commands.bench_pipeline import main

if __name__ == "__main__":
    sys.exit(main())
