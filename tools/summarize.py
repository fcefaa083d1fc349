"""Gather a sweep's results into tables (markdown + CSV, mean ± std over seeds) and plots.

The command is nme_train/commands/summarize.py (also installed as `nme-summarize`);
run `python tools/summarize.py --help` for its options.
"""

import sys

from nme_train.commands.summarize import main

if __name__ == "__main__":
    sys.exit(main())
