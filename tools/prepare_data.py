"""Prepares datasets that can be had offline into TFDS array_record form.

The command is nme_train/commands/prepare_data.py (also installed as `nme-prepare-data`);
run `python tools/prepare_data.py --help` for its options.
"""

import sys

from nme_train.commands.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
