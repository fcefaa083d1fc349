"""Analysis of sweeps and runs: results by group (results), statistics over seeds (stats),
tables (tables), plots (plots), a run's curvature figures (curvature_plots).

`summarize(workdir)` is what nme-summarize does: for each sweep manifest in the workdir,
the tables (markdown and CSV) and the plots; docs/analysis.md says what each holds and
how an experiment file's PLOT settings shape them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os

from nme_train import storage
from nme_train.analysis.plots import plot
from nme_train.analysis.results import ExperimentResults
from nme_train.analysis.tables import write_tables


@dataclasses.dataclass(frozen=True)
class Summary:
    """One experiment's summary: its results and the files written (None: no run done)."""

    results: ExperimentResults
    rows: list[dict]
    markdown: str | None = None
    csv: str | None = None
    png: str | None = None


def manifests(workdir: str, experiment: str = "") -> list[str]:
    """The sweep manifests (sweep_<experiment>.json) in `workdir`; all when `experiment` is
    empty."""
    pattern = f"sweep_{experiment or '*'}.json"
    return sorted(os.path.join(workdir, name) for name in storage.listdir(workdir)
                  if fnmatch.fnmatch(name, pattern))


def summarize(workdir: str, out: str = "", experiment: str = "") -> list[Summary]:
    """Tables and plots of every experiment swept into `workdir`, written to `out` (default:
    the workdir); ValueError when the workdir holds no manifest."""
    found = manifests(workdir, experiment)
    if not found:
        raise ValueError(f"no sweep_{experiment or '*'}.json in {workdir} (run nme-sweep "
                         "first)")
    out = out or workdir
    storage.makedirs(out)
    summaries = []
    for manifest in found:
        exp = ExperimentResults(workdir, manifest)
        rows = exp.rows()
        if not rows:
            summaries.append(Summary(exp, rows))
            continue
        md, csv_path = write_tables(exp, rows, out)
        summaries.append(Summary(exp, rows, md, csv_path, plot(exp, rows, out)))
    return summaries
