"""Draw a run's curvature probes as PNG files.

The command is nme_train/commands/plot_curvature.py (also installed as `nme-plot-curvature`);
run `python tools/plot_curvature.py --help` for its options.
"""

import sys

from nme_train.commands.plot_curvature import main

if __name__ == "__main__":
    sys.exit(main())
