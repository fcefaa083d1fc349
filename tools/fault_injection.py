"""Kill the default job at random moments, damage its checkpoints, resume, and compare.

The command is nme_train/commands/fault_injection.py (also installed as `nme-fault-injection`);
run `python tools/fault_injection.py --help` for its options.
"""

import sys

from nme_train.commands.fault_injection import main

if __name__ == "__main__":
    sys.exit(main())
