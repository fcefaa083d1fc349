"""Probe the curvature of a run's checkpoints, also while the run is training.

The command is nme_train/commands/probe.py (also installed as `nme-probe`);
run `python tools/probe.py --help` for its options.
"""

import sys

from nme_train.commands.probe import main

if __name__ == "__main__":
    sys.exit(main())
