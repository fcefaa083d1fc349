"""What a job writes to a bucket workdir, and what that costs it.

The command is nme_train/commands/bench_bucket.py (also installed as `nme-bench-checkpoint`);
run `python tools/bench_bucket.py --help` for its options.
"""

import sys

from nme_train.commands.bench_bucket import main

if __name__ == "__main__":
    sys.exit(main())
