"""E7: loss and NME of a one-datapoint MSE MLP over a 2-D slice of two hidden weights.

The command is nme_train/commands/toy_landscape.py (also installed as `nme-toy-landscape`);
run `python tools/toy_landscape.py --help` for its options.
"""

import sys

from nme_train.commands.toy_landscape import main

if __name__ == "__main__":
    sys.exit(main())
