"""The ImageNet-scale checks that need an accelerator, in one run.

The command is nme_train/commands/accelerator_check.py (also installed as `nme-accelerator-check`);
run `python tools/accelerator_check.py --help` for its options.
"""

import sys

from nme_train.commands.accelerator_check import main

if __name__ == "__main__":
    sys.exit(main())
