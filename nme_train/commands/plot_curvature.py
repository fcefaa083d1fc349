"""Draw a run's curvature probes as PNG files.

    nme-plot-curvature DIR            # reads DIR/probes.jsonl and probes_offline.jsonl
    nme-plot-curvature DIR --out figs

(`python -m nme_train.commands.plot_curvature` is the same.) Writes into DIR (or --out)
the figures of nme_train.analysis.curvature_plots: spectra, traces, traces by layer,
densities, activation sparsity; a figure whose data the probes do not hold is skipped
(and said so). Exit code 1 when none could be drawn.
"""

from __future__ import annotations

import argparse
import sys

from nme_train import storage
from nme_train.analysis.curvature_plots import plot_curvature


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir")
    parser.add_argument("--out", default="", help="output directory (default: the workdir)")
    args = parser.parse_args(argv)
    try:
        storage.check_reachable(args.workdir, "workdir", writable=False)
        written, skipped = plot_curvature(args.workdir, args.out)
    except (storage.StorageError, ValueError) as e:
        print(f"plot_curvature: error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    for name in skipped:
        print(f"skipped {name}: the probes hold no data for it")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
