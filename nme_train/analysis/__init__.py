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
from collections.abc import Sequence

from nme_train import storage
from nme_train.analysis.plots import plot
from nme_train.analysis.results import ExperimentResults
from nme_train.analysis.tables import draws_table, write_tables


@dataclasses.dataclass(frozen=True)
class Summary:
    """One experiment's summary: its results and the files written (None: no run done)."""

    results: ExperimentResults
    rows: list[dict]
    markdown: str | None = None
    csv: str | None = None
    png: str | None = None
    draws: str | None = None


def manifests(workdir: str, experiment: str = "") -> list[str]:
    """The sweep manifests (sweep_<experiment>.json) in `workdir`; all when `experiment` is
    empty."""
    pattern = f"sweep_{experiment or '*'}.json"
    return sorted(os.path.join(workdir, name) for name in storage.listdir(workdir)
                  if fnmatch.fnmatch(name, pattern))


def summarize(workdir: str, out: str = "", experiment: str = "",
              draws: Sequence[str] = ()) -> list[Summary]:
    """Tables and plots of every experiment swept into `workdir`, written to `out` (default:
    the workdir); ValueError when the workdir holds no manifest. `draws`: the workdirs of
    the same experiments on other data draws: the contrasts on each and over all
    (summary_<experiment>_draws.md)."""
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
        summaries.append(Summary(exp, rows, md, csv_path, plot(exp, rows, out),
                                 write_draws(exp, rows, workdir, draws, out)))
    return summaries


def write_draws(exp: ExperimentResults, rows: list[dict], workdir: str,
                draws: Sequence[str], out: str) -> str | None:
    """summary_<experiment>_draws.md: the contrasts on `workdir`'s draw and on each of
    `draws` (ValueError when one holds no sweep of the experiment)."""
    if not draws:
        return None
    found = [(os.path.basename(workdir.rstrip("/")), exp, rows)]
    for other in draws:
        manifest = manifests(other, exp.name)
        if not manifest:
            raise ValueError(f"--draws: no sweep_{exp.name}.json in {other}")
        other_exp = ExperimentResults(other, manifest[0])
        found.append((os.path.basename(other.rstrip("/")), other_exp, other_exp.rows()))
    path = os.path.join(out, f"summary_{exp.name}_draws.md")
    storage.write_text(path, f"{exp.name}: the contrasts on each data draw and over the "
                       f"draws ({', '.join(name for name, _, _ in found)})\n\n"
                       + "\n".join(draws_table(found)) + "\n")
    return path
