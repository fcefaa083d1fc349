"""Run every point of an experiment grid (configs/paper/eN.py), each in its own workdir.

The command is nme_train/commands/sweep.py (also installed as `nme-sweep`);
run `python tools/sweep.py --help` for its options.
"""

import sys

from nme_train.commands.sweep import main

if __name__ == "__main__":
    sys.exit(main())
