"""How far each trace-penalty gradient is from the true gradient of the trace, on a tiny MLP.

The command is nme_train/commands/gn_estimator_bias.py (also installed as `nme-gn-estimator-bias`);
run `python tools/gn_estimator_bias.py --help` for its options.
"""

import sys

from nme_train.commands.gn_estimator_bias import main

if __name__ == "__main__":
    sys.exit(main())
