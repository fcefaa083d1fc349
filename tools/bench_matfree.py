"""The curvature core's Lanczos, Hutchinson and SLQ side by side with matfree's.

The command is nme_train/commands/bench_matfree.py; run
`python tools/bench_matfree.py --help` for its options.
"""

import sys

from nme_train.commands.bench_matfree import main

if __name__ == "__main__":
    sys.exit(main())
