"""Accelerator numerics: gradients, H v and regularized updates against a float64 reference.

The command is nme_train/commands/check_numerics.py (also installed as `nme-check-numerics`);
run `python tools/check_numerics.py --help` for its options.
"""

import sys

from nme_train.commands.check_numerics import main

if __name__ == "__main__":
    sys.exit(main())
