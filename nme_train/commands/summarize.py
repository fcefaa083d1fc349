"""Gather a sweep's results into tables (markdown + CSV, mean ± std over seeds) and plots.

    nme-summarize DIR                      # every experiment swept into DIR
    nme-summarize DIR --experiment e1      # one of them
    nme-summarize DIR --out docs/results   # where the files go (default DIR)
    nme-summarize DIR --draws DIR2         # also the contrasts on DIR2's data draw and over both

(`python -m nme_train.commands.summarize` is the same.) Reads the sweep manifests
DIR/sweep_<experiment>.json and each run's final.json / diverged.json / probes.jsonl, and
writes summary_<experiment>.md, .csv and .png (with _contrasts, _series, _layers figures
where the experiment's PLOT asks for them): nme_train.analysis, docs/analysis.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nme_train import storage
from nme_train.analysis import summarize


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="the --workdir of nme-sweep")
    parser.add_argument("--experiment", default="", help="e.g. e1 (default: every manifest)")
    parser.add_argument("--out", default="", help="output directory (default: the workdir)")
    parser.add_argument("--draws", nargs="+", default=(), metavar="DIR",
                        help="workdirs of the same experiments on other data draws: the "
                             "contrasts on each draw and over the draws")
    args = parser.parse_args(argv)
    try:
        storage.check_reachable(args.workdir, "workdir", writable=False)
        if args.out:
            storage.check_scheme(args.out, "--out")
        for other in args.draws:
            storage.check_reachable(other, "--draws", writable=False)
        summaries = summarize(args.workdir, args.out, args.experiment, args.draws)
    except (storage.StorageError, ValueError) as e:
        print(f"summarize: error: {e}", file=sys.stderr)
        return 2
    for s in summaries:
        exp = s.results
        if s.markdown is None:
            print(f"summarize: {exp.name}: no finished runs yet ({exp.pending} pending)")
            continue
        print(f"summarize: {exp.name}: {sum(r['seeds'] for r in s.rows)} finished run(s) in "
              f"{len(s.rows)} group(s), {sum(exp.diverged.values())} diverged, {exp.pending} "
              f"pending -> {s.markdown}, {s.csv}, {s.png}")
        print(storage.read_text(s.markdown))
        if s.draws:
            print(f"summarize: {exp.name}: over the data draws -> {s.draws}")
            print(storage.read_text(s.draws))
    return 0


if __name__ == "__main__":
    sys.exit(main())
