"""Gather a sweep's results into tables (markdown + CSV, mean ± std over seeds) and plots.

    python tools/summarize.py DIR                      # every experiment swept into DIR
    python tools/summarize.py DIR --experiment e1      # one of them
    python tools/summarize.py DIR --out docs/results   # where the files go (default DIR)

Reads DIR/sweep_<experiment>.json (written by tools/sweep.py), each run's
DIR/<point>/final.json (a finished run's final metrics) or diverged.json (a
run stopped by a non-finite loss) and, for the probe experiments,
DIR/<point>/probes.jsonl. Points are grouped by their tags except the seed;
unfinished runs are counted, not averaged; diverged runs are counted in
their own column and fail the tolerance test below. Writes, per experiment,
summary_<experiment>.md, .csv and .png:

  kind "final"     test accuracy against the swept hyperparameter (rho,
                   sigma^2 or beta), one line per method/activation, error
                   bars ± one standard error of the mean over seeds; the
                   unregularized runs of a rho/sigma^2 sweep are drawn as
                   horizontal lines; a point with diverged seeds is marked x
                   and labelled (its mean is over the other seeds)
  kind "traces"    Tr H, Tr G and Tr NME (Hutchinson) against the training
                   step, one line per group (mean over seeds, band ± std);
                   and summary_<experiment>_layers.png: the per-layer traces
                   (`<kind>/trace_by_layer`, summed over each layer's
                   parameters) at the last probe
  kind "sparsity"  the mean over layers of the fraction of |sigma''| above
                   the threshold, at the first and the last probe, against beta

The plot settings (each experiment file's PLOT) may add
  "panels": TAG          one subplot per value of TAG (e.g. "bn")
  "symlog_x": T          an x axis linear up to T and logarithmic above
  "zoom": P              a second row of panels showing P points below the
                         unregularized runs' accuracy (collapsed runs hide the rest)
  "zoom_range": [LO, HI] a second row of panels showing accuracies LO-HI (%), where
                         the regularized runs sit far above the unregularized ones
  "zoom_x": [LO, HI]     the zoomed row's range of the swept value
  "contrasts": [[TAG, A, B], ...]
                         a table of the difference A - B in mean test accuracy
                         between the groups that differ only in TAG (B None:
                         the group without TAG), with the standard error of the
                         difference, sqrt(s_A^2/n_A + s_B^2/n_B), and their ratio,
                         then paired over shared seeds, with how many of those
                         pairs ran both runs on one machine (DIR/P/machines.jsonl:
                         XLA's CPU results differ between CPUs); a second table
                         with each side at its best swept value (rho, sigma^2); and
                         summary_<experiment>_contrasts.png, the paired
                         difference against the swept value, ± 1 SE
  "series": [FIELD, ...] summary_<experiment>_series.png: these probe figures
                         (e.g. "nme_split/activation_norm_share") against the
                         training step, mean over seeds ± std, per group;
                         "series_at": [values] keeps the groups at those swept
                         values (and the unregularized ones)

Every "final" table also gives each group's difference from its
unregularized run (method none, the same other tags) with its standard
error, unpaired and paired (the mean over shared seeds of the per-seed
differences, whose SE is their std / sqrt(n): a seed fixes initialisation,
data order and augmentation, so the variation common to both runs
cancels), and, for rho and sigma^2 sweeps, the largest value at which a curve
stays within 1 point of that run (at that value and every smaller one, with
no diverged seed).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence

from nme_train import storage
from nme_train.curvature.operators import kind_label
from nme_train.experiments import format_value
from nme_train.train.probing import read_probes
from nme_train.train.rundir import machine_key, read_diverged, read_final, read_machines

HYPERPARAMETERS = ("rho", "sigma2")
SWEPT = HYPERPARAMETERS + ("probes",)  # tags a method carries with it
TOLERANCE = 1.0  # points of test accuracy, for the "largest value within" table
LABELS = {"sigma2": "σ²", "rho": "ρ", "beta": "β"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than 2 values)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def fmt(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    if math.isnan(mean):
        return "—"
    if math.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def difference(a: dict, b: dict, field: str = "test_acc") -> tuple[float, float]:
    """(mean_a - mean_b, standard error of that difference) for two rows."""
    diff = a[f"{field}_mean"] - b[f"{field}_mean"]
    var = 0.0
    for row in (a, b):
        std, n = row[f"{field}_std"], row["seeds"]
        if n < 2 or math.isnan(std):
            return diff, math.nan
        var += std**2 / n
    return diff, math.sqrt(var)


def paired_difference(a: dict, b: dict, field: str = "test_acc") -> tuple[float, float, int]:
    """(mean over shared seeds of a_s - b_s, its standard error, the number of seeds).

    A seed fixes the initialisation, the data order and the augmentation, so two runs
    of one seed differ only in what the grid changes: the seed-to-seed variation common
    to both cancels from the difference."""
    a_by, b_by = a.get(f"{field}_by_seed", {}), b.get(f"{field}_by_seed", {})
    diffs = [a_by[s] - b_by[s] for s in sorted(set(a_by) & set(b_by), key=str)
             if not (math.isnan(a_by[s]) or math.isnan(b_by[s]))]
    if not diffs:
        return math.nan, math.nan, 0
    mean, std = mean_std(diffs)
    se = std / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return mean, se, len(diffs)


def one_machine_pairs(a: dict, b: dict) -> str:
    """"k/n": of the n seeds both rows ran, the k whose two runs each ran on one machine, the
    same (DIR/P/machines.jsonl; XLA's CPU results differ between CPUs); "—" without
    records."""
    a_by, b_by = a.get("machines_by_seed", {}), b.get("machines_by_seed", {})
    shared = set(a_by) & set(b_by)
    if not shared or not any(a_by[s] or b_by[s] for s in shared):
        return "—"
    same = sum(1 for s in shared if len(a_by[s]) == 1 and a_by[s] == b_by[s])
    return f"{same}/{len(shared)}"


def fmt_difference(diff: float, se: float) -> list[str]:
    """[Δ ± SE in points, |Δ|/SE] cells."""
    if math.isnan(diff):
        return ["—", "—"]
    if math.isnan(se):
        return [f"{100 * diff:+.2f}", "—"]
    ratio = abs(diff) / se if se > 0 else math.inf
    return [f"{100 * diff:+.2f} ± {100 * se:.2f}", f"{ratio:.1f}"]


def layer_of(path: str) -> str:
    """The layer (module) of a parameter path: "Conv_0/kernel" -> "Conv_0"."""
    return path.rsplit("/", 1)[0] if "/" in path else path


class ExperimentResults:
    """One sweep manifest and its runs, grouped by tags without the seed."""

    def __init__(self, workdir: str, manifest_path: str):
        self.manifest = json.loads(storage.read_text(manifest_path))
        self.name = self.manifest["experiment"]
        self.plot = self.manifest.get("plot", {"kind": "final"})
        self.groups: dict[tuple, list[dict]] = {}
        self.diverged: dict[tuple, int] = {}
        self.pending = 0
        for point in self.manifest["points"]:
            tags = dict(point["tags"])
            seed = tags.pop("seed", None)
            run_dir = os.path.join(workdir, point["name"])
            key = tuple(tags.items())
            final = read_final(run_dir)
            if final is None:
                if read_diverged(run_dir) is not None:
                    self.diverged[key] = self.diverged.get(key, 0) + 1
                    self.groups.setdefault(key, [])
                else:
                    self.pending += 1
                continue
            self.groups.setdefault(key, []).append(
                {"seed": seed, "final": final, "dir": run_dir,
                 "machines": frozenset(map(machine_key, read_machines(run_dir)))})
        self.tag_names: list[str] = []  # in order of appearance: methods differ in their
        for point in self.manifest["points"]:  # hyperparameter's name (rho, sigma2)
            self.tag_names += [k for k in point["tags"] if k != "seed" and k not in
                               self.tag_names]

    @property
    def kind(self) -> str:
        return self.plot.get("kind", "final")

    def rows(self) -> list[dict]:
        """One row per group: its tags, the number of seeds and the figures."""
        rows = []
        for key, runs in self.groups.items():
            row: dict = {**dict(key), "seeds": len(runs), "diverged": self.diverged.get(key, 0)}
            for field, metric in (("test_acc", "eval/accuracy"), ("test_loss", "eval/loss"),
                                  ("train_loss", "train/loss")):
                values = [r["final"].get(metric, math.nan) for r in runs]
                row[f"{field}_mean"], row[f"{field}_std"] = mean_std(values)
                row[f"{field}_by_seed"] = {r["seed"]: v for r, v in zip(runs, values)}
            row["machines_by_seed"] = {r["seed"]: r["machines"] for r in runs}
            wall = [r["final"].get("train/wall_time_sec", math.nan) for r in runs]
            row["wall_s_mean"] = statistics.fmean(wall) if wall else math.nan
            if self.kind == "traces":
                self._trace_figures(row, runs)
            if self.kind == "sparsity":
                before, after = [], []
                for r in runs:
                    records = [p for p in read_probes(r["dir"]) if "sparsity/mean" in p]
                    if records:
                        before.append(records[0]["sparsity/mean"])
                        after.append(records[-1]["sparsity/mean"])
                row["sparsity_init_mean"], row["sparsity_init_std"] = mean_std(before)
                row["sparsity_final_mean"], row["sparsity_final_std"] = mean_std(after)
            rows.append(row)
        if self.kind != "traces":
            for row in rows:
                base = self.baseline(row, rows)
                diff, se = difference(row, base) if base else (math.nan, math.nan)
                row["delta_vs_none_mean"], row["delta_vs_none_se"] = diff, se
                paired = paired_difference(row, base) if base else (math.nan, math.nan, 0)
                (row["paired_delta_mean"], row["paired_delta_se"],
                 row["paired_seeds"]) = paired
        return rows

    def _trace_figures(self, row: dict, runs: list[dict]) -> None:
        """First, last and smallest trace over training; per-layer traces at both ends."""
        for name in self.plot["y"]:
            first, last, low = [], [], []
            for r in runs:
                series = [p[name] for p in read_probes(r["dir"]) if name in p]
                if series:
                    first.append(series[0])
                    last.append(series[-1])
                    low.append(min(series))
            label = name.split("/")[0]
            row[f"{label}_first_mean"], row[f"{label}_first_std"] = mean_std(first)
            row[f"{label}_last_mean"], row[f"{label}_last_std"] = mean_std(last)
            row[f"{label}_min_mean"], row[f"{label}_min_std"] = mean_std(low)
            layers: dict[str, dict[str, list[float]]] = {}
            for r in runs:
                records = [p for p in read_probes(r["dir"]) if f"{label}/trace_by_layer" in p]
                for end, record in (("first", records[:1]), ("last", records[-1:])):
                    for rec in record:
                        sums: dict[str, float] = {}
                        for path, value in rec[f"{label}/trace_by_layer"].items():
                            sums[layer_of(path)] = sums.get(layer_of(path), 0.0) + value
                        for layer, value in sums.items():
                            layers.setdefault(layer, {}).setdefault(end, []).append(value)
            if layers:
                row[f"{label}_layers"] = {layer: {end: mean_std(v) for end, v in ends.items()}
                                          for layer, ends in layers.items()}

    def baseline(self, row: dict, rows: list[dict]) -> dict | None:
        """The unregularized group with `row`'s other tags (None for itself or if none)."""
        if row.get("method") in (None, "none"):
            return None
        others = {k: v for k, v in row.items() if k in self.tag_names
                  and k != "method" and k not in SWEPT}
        for r in rows:
            if r.get("method") == "none" and all(r.get(k) == v for k, v in others.items()):
                return r
        return None


def tag_cells(row: dict, tag_names: Sequence[str]) -> list[str]:
    return [format_value(row[t]) if t in row else "—" for t in tag_names]


def _sort_key(row: dict, tag_names: Sequence[str]) -> tuple:
    return tuple((0, row[t], "") if isinstance(row.get(t), (int, float))
                 else (1, 0, str(row.get(t, ""))) for t in tag_names)


def _contrast_pairs(exp: ExperimentResults, rows: list[dict], tag: str, a, b
                    ) -> list[tuple[dict, dict]]:
    """(row A, row B) for the groups with TAG = A and TAG = B (B None: without TAG) whose other
    tags agree."""
    others = [t for t in exp.tag_names if t != tag]
    return [(ra, rb) for ra in rows if ra.get(tag) == a for rb in rows
            if (rb.get(tag) == b if b is not None else tag not in rb)
            and all(ra.get(t) == rb.get(t) for t in others if t in rb)]


def _best_pairs(exp: ExperimentResults, rows: list[dict], tag: str, a, b
                ) -> list[tuple[dict, dict]]:
    """For each setting of the tags other than TAG and the swept hyperparameters: A's group
    and B's group at their best mean test accuracy over the swept values (groups with a
    diverged seed are not candidates)."""
    context = [t for t in exp.tag_names if t != tag and t not in SWEPT]

    def best(value) -> dict[tuple, dict]:
        out: dict[tuple, dict] = {}
        for r in rows:
            if (r.get(tag) == value if value is not None else tag not in r) and r["seeds"] \
                    and not r["diverged"]:
                key = tuple(r.get(t) for t in context if t in r)
                if key not in out or r["test_acc_mean"] > out[key]["test_acc_mean"]:
                    out[key] = r
        return out

    best_b = best(b)
    pairs = []
    for ra in best(a).values():
        for rb in best_b.values():
            if all(ra.get(t) == rb.get(t) for t in context if t in ra and t in rb):
                pairs.append((ra, rb))
    return pairs


def _swept_value(row: dict) -> str:
    values = [f"{LABELS.get(t, t)} {format_value(row[t])}" for t in SWEPT if t in row]
    return ", ".join(values) or "—"


def _paired_cells(a: dict, b: dict) -> str:
    """"paired seeds | paired Δ ± SE | paired |Δ|/SE | pairs on one machine" of A - B."""
    diff, se, n = paired_difference(a, b)
    return f"{n} | {' | '.join(fmt_difference(diff, se))} | {one_machine_pairs(a, b)}"


def contrast_table(exp: ExperimentResults, rows: list[dict]) -> list[str]:
    """Markdown lines of the PLOT's contrasts: A - B between groups differing in one tag, at
    each swept value and with each side at its best swept value."""
    lines: list[str] = []
    for tag, a, b in exp.plot.get("contrasts", ()):
        pairs = _contrast_pairs(exp, rows, tag, a, b)
        if not pairs:
            continue
        others = [t for t in exp.tag_names if t != tag]
        b_name = format_value(b) if b is not None else f"no {tag}"
        lines += ["", f"**{tag} {format_value(a)} − {b_name}** (test accuracy, points; "
                  "SE of the difference, unpaired and paired over shared seeds; |Δ|/SE > 2 is "
                  "a difference the seeds resolve)", "",
                  f"| {' | '.join(others)} | Δ ± SE | \\|Δ\\|/SE | paired seeds | "
                  "paired Δ ± SE | paired \\|Δ\\|/SE | pairs on one machine |",
                  "|" + "---|" * (len(others) + 6)]
        for ra, rb in sorted(pairs, key=lambda p: _sort_key(p[0], others)):
            lines.append(f"| {' | '.join(tag_cells(ra, others))} | "
                         f"{' | '.join(fmt_difference(*difference(ra, rb)))} | "
                         f"{_paired_cells(ra, rb)} |")
        best = [(ra, rb) for ra, rb in _best_pairs(exp, rows, tag, a, b)
                if any(t in ra or t in rb for t in SWEPT)]
        if best:
            context = [t for t in exp.tag_names if t != tag and t not in SWEPT]
            lines += ["", "Each side at its best mean over the swept values (chosen on the "
                      "same seeds, which flatters each side a little)",
                      "", f"| {' | '.join(context)} | {format_value(a)} at | {b_name} at | "
                      "paired seeds | paired Δ ± SE | paired \\|Δ\\|/SE | pairs on one machine |",
                      "|" + "---|" * (len(context) + 6)]
            for ra, rb in sorted(best, key=lambda p: _sort_key(p[0], context)):
                lines.append(f"| {' | '.join(tag_cells(ra, context))} | {_swept_value(ra)} | "
                             f"{_swept_value(rb)} | {_paired_cells(ra, rb)} |")
    return lines


def tolerance_table(exp: ExperimentResults, rows: list[dict]) -> list[str]:
    """The largest rho / sigma^2 of each curve within TOLERANCE points of its plain run."""
    x = exp.plot.get("x")
    if x not in HYPERPARAMETERS:
        return []
    line_tags = [t for t in exp.tag_names if t not in HYPERPARAMETERS and t != "seed"]
    curves: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("method") not in (None, "none") and x in r:
            curves.setdefault(tuple(r.get(t) for t in line_tags), []).append(r)
    lines = ["", f"**Largest {LABELS.get(x, x)} within {TOLERANCE:g} point of the "
             "unregularized run** (at that value and every smaller one, no seed diverged)", "",
             f"| {' | '.join(line_tags)} | unregularized (%) | largest {LABELS.get(x, x)} "
             "within | first value outside (Δ, points) |", "|" + "---|" * (len(line_tags) + 3)]
    for key, members in sorted(curves.items(), key=lambda kv: _sort_key(kv[1][0], line_tags)):
        base = exp.baseline(members[0], rows)
        if base is None:
            continue
        best, outside = "none", "—"
        for r in sorted(members, key=lambda r: r[x]):
            drop = r["test_acc_mean"] - base["test_acc_mean"]
            if r["diverged"] or math.isnan(drop) or 100 * drop < -TOLERANCE - 1e-9:
                why = [] if math.isnan(drop) else [f"{100 * drop:+.2f}"]
                why += [f"diverged {r['diverged']}"] if r["diverged"] else []
                outside = f"{format_value(r[x])} ({', '.join(why)})"
                break
            best = format_value(r[x])
        cells = [format_value(v) if v is not None else "—" for v in key]
        lines.append(f"| {' | '.join(cells)} | {100 * base['test_acc_mean']:.2f} | {best} | "
                     f"{outside} |")
    return lines


def layer_table(exp: ExperimentResults, rows: list[dict]) -> list[str]:
    """Per-layer traces (sum over each layer's parameters) at the first and last probe."""
    kinds = [n.split("/")[0] for n in exp.plot.get("y", ())]
    if not any(f"{k}_layers" in r for r in rows for k in kinds):
        return []
    group_tags = [t for t in exp.tag_names if any(t in r for r in rows)]
    header = group_tags + ["layer"] + [f"Tr {kind_label(k)} {end}" for k in kinds
                                       for end in ("first", "last")]
    lines = ["", "**Per-layer traces** (Hutchinson, tr of each layer's diagonal block summed "
             "over its parameters; mean ± std over seeds, at the first and the last probe)", "",
             f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: _sort_key(r, group_tags)):
        layers = sorted({layer for k in kinds for layer in r.get(f"{k}_layers", {})})
        for layer in layers:
            cells = tag_cells(r, group_tags) + [layer]
            for k in kinds:
                ends = r.get(f"{k}_layers", {}).get(layer, {})
                cells += [fmt(*ends.get(end, (math.nan, math.nan)), digits=2)
                          for end in ("first", "last")]
            lines.append(f"| {' | '.join(cells)} |")
    return lines


def write_tables(exp: ExperimentResults, rows: list[dict], out: str) -> tuple[str, str]:
    rows = sorted(rows, key=lambda r: _sort_key(r, exp.tag_names))
    csv_path = os.path.join(out, f"summary_{exp.name}.csv")
    flat = [{k: v for k, v in r.items() if not k.endswith(("_layers", "_by_seed"))}
            for r in rows]
    columns = list(exp.tag_names) + [k for k in (flat[0] if flat else {})
                                     if k not in exp.tag_names]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(flat)
    storage.write_text(csv_path, text.getvalue())
    kind = exp.kind
    any_diverged = any(r["diverged"] for r in rows)
    header = list(exp.tag_names) + ["seeds"] + (["diverged"] if any_diverged else []) + [
        "test accuracy (%)", "test loss", "train loss"]
    extra: list[tuple[str, str, float]] = []
    if kind == "traces":
        for name in exp.plot["y"]:
            label = name.split("/")[0]
            extra += [(f"Tr {label} first", f"{label}_first", 1.0),
                      (f"Tr {label} last", f"{label}_last", 1.0),
                      (f"Tr {label} min", f"{label}_min", 1.0)]
    if kind == "sparsity":
        extra += [("non-zero σ'' at init (%)", "sparsity_init", 100.0),
                  ("after training (%)", "sparsity_final", 100.0)]
    deltas = kind != "traces" and any(not math.isnan(r["delta_vs_none_mean"]) for r in rows)
    header += [h for h, _, _ in extra]
    header += ["Δ vs none ± SE (points)", "\\|Δ\\|/SE", "paired Δ ± SE", "paired \\|Δ\\|/SE"
               ] if deltas else []
    header += ["wall s"]
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    for r in rows:
        cells = tag_cells(r, exp.tag_names) + [str(r["seeds"])]
        cells += [str(r["diverged"])] if any_diverged else []
        cells.append(fmt(r["test_acc_mean"], r["test_acc_std"], 100.0))
        cells.append(fmt(r["test_loss_mean"], r["test_loss_std"], digits=4))
        cells.append(fmt(r["train_loss_mean"], r["train_loss_std"], digits=4))
        cells += [fmt(r[f"{key}_mean"], r[f"{key}_std"], scale, digits=1 if scale == 1.0
                      else 2) for _, key, scale in extra]
        if deltas:
            cells += fmt_difference(r["delta_vs_none_mean"], r["delta_vs_none_se"])
            cells += fmt_difference(r["paired_delta_mean"], r["paired_delta_se"])
        cells.append(f"{r['wall_s_mean']:.0f}" if not math.isnan(r["wall_s_mean"]) else "—")
        lines.append(f"| {' | '.join(cells)} |")
    if exp.pending:
        lines.append(f"\n{exp.pending} run(s) of this grid have not finished.")
    if kind == "final":
        lines += tolerance_table(exp, rows)
    lines += contrast_table(exp, rows)
    if kind == "traces":
        lines += layer_table(exp, rows)
    if kind == "final":
        lines += series_table(exp)
    md_path = os.path.join(out, f"summary_{exp.name}.md")
    storage.write_text(md_path, f"{exp.name} ({exp.manifest['config']}:"
                       f"{exp.manifest['scale']}); mean ± std over seeds\n\n"
                       + "\n".join(lines) + "\n")
    return md_path, csv_path


def _label(tags: dict, names: Sequence[str]) -> str:
    return ", ".join(format_value(tags[n]) for n in names if n in tags) or "all"


def _se(row: dict, field: str, scale: float = 100.0) -> float:
    std = row[f"{field}_std"]
    return 0.0 if math.isnan(std) else scale * std / math.sqrt(row["seeds"])


def _panels(exp: ExperimentResults, rows: list[dict]) -> list[tuple[str, list[dict]]]:
    tag = exp.plot.get("panels")
    values = sorted({r[tag] for r in rows if tag in r}, key=str) if tag else []
    if not values:
        return [("", rows)]
    return [(f"{tag}={format_value(v)}", [r for r in rows if r.get(tag) == v]) for v in values]


def _plot_final(exp: ExperimentResults, ax, rows: list[dict]) -> None:
    x = exp.plot["x"]
    rows = [r for r in rows if x in r]  # a method tagged with another hyperparameter
    line_tags = exp.plot.get("lines", ())
    baselines = x in HYPERPARAMETERS  # the unregularized runs sit at rho = 0
    plain = [r for r in rows if baselines and r.get("method") == "none"]
    others = [t for t in line_tags if t != "method"]
    lines: dict[str, list[dict]] = {}
    for r in rows:
        if r not in plain:
            lines.setdefault(_label(r, line_tags), []).append(r)
    for label, members in sorted(lines.items()):
        members.sort(key=lambda r: r[x])
        if not exp.plot.get("log_x"):  # start each curve at its unregularized run
            members = [b for b in plain
                       if all(b.get(t) == members[0].get(t) for t in others)] + members
        line = ax.errorbar([r[x] for r in members], [100 * r["test_acc_mean"] for r in members],
                           yerr=[_se(r, "test_acc") for r in members], marker="o", capsize=3,
                           label=label)
        for r in members:  # a point some of whose seeds diverged: the mean is of the others
            if r["diverged"]:
                y = 100 * r["test_acc_mean"] if r["seeds"] else ax.get_ylim()[0]
                ax.plot([r[x]], [y], marker="x", ms=10, color=line[0].get_color())
                ax.annotate(f"{r['diverged']} diverged", (r[x], y), fontsize=6,
                            xytext=(4, -10), textcoords="offset points",
                            color=line[0].get_color())
    for i, r in enumerate(plain):
        ax.axhline(100 * r["test_acc_mean"], ls=("--", ":", "-.")[i % 3], lw=1,
                   color="grey", label=f"none{', ' if others else ''}{_label(r, others)}"
                   if others else "none")
    ax.set_ylabel("test accuracy (%), ± 1 SE over seeds")


def _plot_sparsity(exp: ExperimentResults, ax, rows: list[dict]) -> None:
    x = exp.plot["x"]
    rows = sorted([r for r in rows if x in r], key=lambda r: r[x])
    for field, label in (("sparsity_init", "at initialisation"),
                         ("sparsity_final", "after training")):
        ax.errorbar([r[x] for r in rows], [100 * r[f"{field}_mean"] for r in rows],
                    yerr=[_se(r, field) for r in rows], marker="o", capsize=3, label=label)
    ax.set_ylabel("pre-activations with |σ''| > threshold (%)")


def probe_series(runs: list[dict], name: str) -> dict[int, tuple[float, float]]:
    """The probe figure `name` of `runs` by step: {step: (mean, std) over runs}, at the
    steps every run probed."""
    series = [{p["step"]: p[name] for p in read_probes(r["dir"]) if name in p} for r in runs]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    return {t: mean_std([s[t] for s in series]) for t in steps}


def _series_groups(exp: ExperimentResults) -> tuple[list, list[str]]:
    """The groups PLOT["series"] covers (at PLOT["series_at"]'s swept values, and the
    unregularized ones) and the tags that name them."""
    at = set(exp.plot.get("series_at", ()))
    x = exp.plot.get("x")
    groups = [(key, runs) for key, runs in exp.groups.items() if runs and (
        not at or dict(key).get("method") == "none" or dict(key).get(x) in at)]
    names = [t for t in exp.tag_names if t not in (x,)] if at else list(exp.tag_names)
    return sorted(groups, key=lambda kv: str(kv[0])), names


def series_table(exp: ExperimentResults) -> list[str]:
    """PLOT["series"]'s probe figures per group and probed step, mean ± std over seeds (the
    numbers behind summary_<experiment>_series.png)."""
    fields = exp.plot.get("series", ())
    groups, names = _series_groups(exp)
    if not fields or not groups:
        return []
    x = exp.plot.get("x")
    at = exp.plot.get("series_at", ())
    where = f" at {LABELS.get(x, x)} {', '.join(map(format_value, at))}" if at else ""
    header = names + ["step"] + list(fields)
    lines = ["", f"**Probes over training**{where} (mean ± std over seeds; — where a "
             "figure is undefined at that step)", "",
             f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    for key, runs in groups:
        tags = dict(key)
        per_field = [probe_series(runs, name) for name in fields]
        for step in sorted(set().union(*per_field)):
            cells = [format_value(tags[n]) if n in tags else "—" for n in names]
            cells.append(str(step))
            cells += [fmt(*series[step], digits=3) if step in series else "—"
                      for series in per_field]
            lines.append(f"| {' | '.join(cells)} |")
    return lines


def _plot_band(ax, runs: list[dict], name: str, label: str, alpha: float) -> None:
    """The probe figure `name` of `runs` against the step: mean over runs, band ± std, at
    the steps every run probed."""
    stats = probe_series(runs, name)
    if not stats:
        return
    steps = sorted(stats)
    mean = [stats[t][0] for t in steps]
    std = [0.0 if math.isnan(stats[t][1]) else stats[t][1] for t in steps]
    line, = ax.plot(steps, mean, marker="o", ms=3, label=label)
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)],
                    [m + s for m, s in zip(mean, std)], alpha=alpha, color=line.get_color())


def _save(fig, path: str, title: str | None) -> str:
    """Writes the figure (with its title) to `path` and closes it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _plot_traces(exp: ExperimentResults, axes) -> None:
    line_tags = exp.plot.get("lines", exp.tag_names)
    for ax, name in zip(axes, exp.plot["y"]):
        for key, runs in sorted(exp.groups.items(), key=lambda kv: str(kv[0])):
            _plot_band(ax, runs, name, _label(dict(key), line_tags), alpha=0.2)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlabel("training step")
        ax.set_title(f"Tr {name.split('/')[0]}")
    axes[0].legend(fontsize=6)


def plot(exp: ExperimentResults, rows: list[dict], out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(out, f"summary_{exp.name}.png")
    title = f"{exp.name}: {exp.manifest['config']}:{exp.manifest['scale']}"
    if exp.kind == "traces":
        names = exp.plot["y"]
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.2))
        _plot_traces(exp, axes)
    else:
        panels = _panels(exp, rows)
        zoom_range = exp.plot.get("zoom_range") if exp.kind == "final" else None
        zoom = (exp.plot.get("zoom") or zoom_range) if exp.kind == "final" else None
        fig, axes = plt.subplots(2 if zoom else 1, len(panels),
                                 figsize=(6.5 * len(panels), 8.6 if zoom else 4.8),
                                 sharey="row", squeeze=False)
        for row_axes, zoomed in zip(axes, (False, True)):
            for ax, (panel, members) in zip(row_axes, panels):
                (_plot_sparsity if exp.kind == "sparsity" else _plot_final)(exp, ax, members)
                x = exp.plot["x"]
                ax.set_xlabel(LABELS.get(x, x))
                if exp.plot.get("log_x"):
                    ax.set_xscale("log")
                elif exp.plot.get("symlog_x"):  # linear near 0 (the plain run), log above
                    ax.set_xscale("symlog", linthresh=exp.plot["symlog_x"])
                    ax.set_xlim(left=-0.02 * exp.plot["symlog_x"])
                if zoomed and exp.plot.get("zoom_x"):
                    ax.set_xlim(*exp.plot["zoom_x"])
                if zoomed and zoom_range:
                    ax.set_ylim(*zoom_range)
                elif zoomed:  # around the unregularized runs: the differences that matter
                    plain = [100 * r["test_acc_mean"] for r in rows if r.get("method") == "none"]
                    if plain:
                        ax.set_ylim(min(plain) - zoom, max(plain) + zoom / 4)
                ax.set_title(f"{panel}{' (zoom)' if zoomed else ''}", fontsize=9)
                ax.legend(fontsize=7)
    _save(fig, path, title)
    if exp.kind == "traces":
        plot_layer_traces(exp, rows, out)
    if exp.kind == "final":
        plot_contrasts(exp, rows, out)
        plot_probe_series(exp, rows, out)
    return path


def plot_contrasts(exp: ExperimentResults, rows: list[dict], out: str) -> str | None:
    """summary_<experiment>_contrasts.png: each PLOT contrast's paired difference A - B
    (points, ± 1 SE over shared seeds) against the swept hyperparameter, one panel per
    contrast, one line per setting of the other tags."""
    x = exp.plot.get("x")
    panels = []
    for tag, a, b in exp.plot.get("contrasts", ()):
        lines: dict[str, list[tuple[float, float, float]]] = {}
        for ra, rb in _contrast_pairs(exp, rows, tag, a, b):
            diff, se, n = paired_difference(ra, rb)
            if x in ra and n:
                label = _label(ra, [t for t in exp.tag_names if t not in (tag, x)])
                lines.setdefault(label, []).append((ra[x], 100 * diff, 100 * se))
        if lines:
            panels.append((f"{tag}: {format_value(a)} − "
                           f"{format_value(b) if b is not None else 'none'}", lines))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // columns), columns, squeeze=False,
                             figsize=(5.2 * columns, 4.0 * -(-len(panels) // columns)))
    for ax, (title, lines) in zip(axes.flat, panels):
        for label, points in sorted(lines.items()):
            points.sort()
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[0.0 if math.isnan(p[2]) else p[2] for p in points], marker="o",
                        capsize=3, label=label)
        ax.axhline(0.0, color="grey", lw=0.8)
        if exp.plot.get("log_x") or exp.plot.get("symlog_x"):
            ax.set_xscale("log")
        ax.set_xlabel(LABELS.get(x, x))
        ax.set_ylabel("paired Δ test accuracy (points), ± 1 SE")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return _save(fig, os.path.join(out, f"summary_{exp.name}_contrasts.png"),
                 f"{exp.name}: paired contrasts")


def plot_probe_series(exp: ExperimentResults, rows: list[dict], out: str) -> str | None:
    """summary_<experiment>_series.png: PLOT["series"]'s probe figures against the training
    step (mean over seeds, band ± std), one panel per figure, for the groups at the swept
    values in PLOT["series_at"] (and the unregularized ones)."""
    fields = exp.plot.get("series", ())
    at = set(exp.plot.get("series_at", ()))
    x = exp.plot.get("x")
    groups, names = _series_groups(exp)
    if not fields or not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fields), figsize=(5.2 * len(fields), 4.2), squeeze=False)
    for ax, name in zip(axes[0], fields):
        for key, runs in groups:
            _plot_band(ax, runs, name, _label(dict(key), names), alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_title(name, fontsize=9)
    axes[0][0].legend(fontsize=6)
    suffix = f" at {LABELS.get(x, x)} {', '.join(map(format_value, sorted(at)))}" if at else ""
    return _save(fig, os.path.join(out, f"summary_{exp.name}_series.png"),
                 f"{exp.name}: probes over training{suffix}")


def plot_layer_traces(exp: ExperimentResults, rows: list[dict], out: str) -> str | None:
    """Bars of each group's per-layer traces at the last probe, one panel per kind."""
    kinds = [n.split("/")[0] for n in exp.plot.get("y", ())]
    rows = [r for r in rows if any(f"{k}_layers" in r for k in kinds)]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({layer for r in rows for k in kinds for layer in r.get(f"{k}_layers", {})})
    group_tags = exp.plot.get("lines", exp.tag_names)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.5), squeeze=False)
    width = 0.8 / len(rows)
    for ax, kind in zip(axes[0], kinds):
        for i, r in enumerate(sorted(rows, key=lambda r: _sort_key(r, group_tags))):
            values = [r.get(f"{kind}_layers", {}).get(layer, {}).get("last", (math.nan,) * 2)
                      for layer in layers]
            ax.bar([j + i * width for j in range(len(layers))], [m for m, _ in values], width,
                   yerr=[0 if math.isnan(s) else s for _, s in values],
                   label=_label(r, group_tags))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
        ax.set_xticklabels(layers, rotation=30, fontsize=7)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"Tr {kind} by layer, last probe (± std over seeds)", fontsize=9)
    axes[0][0].legend(fontsize=6)
    return _save(fig, os.path.join(out, f"summary_{exp.name}_layers.png"), None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="the --workdir of tools/sweep.py")
    parser.add_argument("--experiment", default="", help="e.g. e1 (default: every manifest)")
    parser.add_argument("--out", default="", help="output directory (default: the workdir)")
    args = parser.parse_args(argv)
    pattern = f"sweep_{args.experiment or '*'}.json"
    try:
        storage.check_reachable(args.workdir, "workdir", writable=False)
        if args.out:
            storage.check_scheme(args.out, "--out")
    except storage.StorageError as e:
        print(f"summarize: error: {e}", file=sys.stderr)
        return 2
    manifests = [os.path.join(args.workdir, name) for name in storage.listdir(args.workdir)
                 if fnmatch.fnmatch(name, pattern)]
    if not manifests:
        print(f"summarize: error: no {pattern} in {args.workdir} (run tools/sweep.py first)",
              file=sys.stderr)
        return 2
    out = args.out or args.workdir
    storage.makedirs(out)
    for manifest in manifests:
        exp = ExperimentResults(args.workdir, manifest)
        rows = exp.rows()
        if not rows:
            print(f"summarize: {exp.name}: no finished runs yet ({exp.pending} pending)")
            continue
        md, csv_path = write_tables(exp, rows, out)
        png = plot(exp, rows, out)
        print(f"summarize: {exp.name}: {sum(r['seeds'] for r in rows)} finished run(s) in "
              f"{len(rows)} group(s), {sum(exp.diverged.values())} diverged, {exp.pending} "
              f"pending -> {md}, {csv_path}, {png}")
        print(storage.read_text(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
