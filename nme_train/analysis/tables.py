"""Markdown and CSV tables of a sweep's results (docs/analysis.md has what each holds)."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence

from nme_train import storage
from nme_train.analysis.results import ExperimentResults, probe_series
from nme_train.analysis.stats import (
    HYPERPARAMETERS,
    LABELS,
    SWEPT,
    TOLERANCE,
    best_pairs,
    contrast_pairs,
    difference,
    one_machine_pairs,
    over_draws,
    paired_difference,
)
from nme_train.curvature.operators import kind_label
from nme_train.sweeps.grids import format_value


def fmt(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    if math.isnan(mean):
        return "—"
    if math.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def fmt_difference(diff: float, se: float) -> list[str]:
    """[Δ ± SE in points, |Δ|/SE] cells."""
    if math.isnan(diff):
        return ["—", "—"]
    if math.isnan(se):
        return [f"{100 * diff:+.2f}", "—"]
    ratio = abs(diff) / se if se > 0 else math.inf
    return [f"{100 * diff:+.2f} ± {100 * se:.2f}", f"{ratio:.1f}"]


def tag_cells(row: dict, tag_names: Sequence[str]) -> list[str]:
    return [format_value(row[t]) if t in row else "—" for t in tag_names]


def sort_key(row: dict, tag_names: Sequence[str]) -> tuple:
    return tuple((0, row[t], "") if isinstance(row.get(t), (int, float))
                 else (1, 0, str(row.get(t, ""))) for t in tag_names)


def swept_value(row: dict) -> str:
    values = [f"{LABELS.get(t, t)} {format_value(row[t])}" for t in SWEPT if t in row]
    return ", ".join(values) or "—"


def paired_cells(a: dict, b: dict) -> str:
    """"paired seeds | paired Δ ± SE | paired |Δ|/SE | pairs on one machine" of A - B."""
    diff, se, n = paired_difference(a, b)
    return f"{n} | {' | '.join(fmt_difference(diff, se))} | {one_machine_pairs(a, b)}"


def contrast_table(exp: ExperimentResults, rows: list[dict]) -> list[str]:
    """Markdown lines of the PLOT's contrasts: A - B between groups differing in one tag, at
    each swept value and with each side at its best swept value."""
    lines: list[str] = []
    for tag, a, b in exp.plot.get("contrasts", ()):
        pairs = contrast_pairs(exp, rows, tag, a, b)
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
        for ra, rb in sorted(pairs, key=lambda p: sort_key(p[0], others)):
            lines.append(f"| {' | '.join(tag_cells(ra, others))} | "
                         f"{' | '.join(fmt_difference(*difference(ra, rb)))} | "
                         f"{paired_cells(ra, rb)} |")
        best = [(ra, rb) for ra, rb in best_pairs(exp, rows, tag, a, b)
                if any(t in ra or t in rb for t in SWEPT)]
        if best:
            context = [t for t in exp.tag_names if t != tag and t not in SWEPT]
            lines += ["", "Each side at its best mean over the swept values (chosen on the "
                      "same seeds, which flatters each side a little)",
                      "", f"| {' | '.join(context)} | {format_value(a)} at | {b_name} at | "
                      "paired seeds | paired Δ ± SE | paired \\|Δ\\|/SE | pairs on one machine |",
                      "|" + "---|" * (len(context) + 6)]
            for ra, rb in sorted(best, key=lambda p: sort_key(p[0], context)):
                lines.append(f"| {' | '.join(tag_cells(ra, context))} | {swept_value(ra)} | "
                             f"{swept_value(rb)} | {paired_cells(ra, rb)} |")
    return lines


def draws_table(draws: Sequence[tuple[str, ExperimentResults, list[dict]]]) -> list[str]:
    """Markdown lines of the PLOT's contrasts (the first draw's) with each side at its best,
    on each data draw (`draws`: (name, results, rows), one sweep of the experiment per
    draw), paired over the draw's seeds, and over the draws (stats.over_draws)."""
    lines: list[str] = []
    for tag, a, b in draws[0][1].plot.get("contrasts", ()):
        found = []
        for _, exp, rows in draws:
            context = [t for t in exp.tag_names if t != tag and t not in SWEPT]
            found.append({tuple((t, ra[t]) for t in context if t in ra): (ra, rb)
                          for ra, rb in best_pairs(exp, rows, tag, a, b)})
        keys = sorted((k for k in found[0] if all(k in f for f in found[1:])), key=str)
        if not keys:
            continue
        b_name = format_value(b) if b is not None else f"no {tag}"
        lines += ["", f"**{tag} {format_value(a)} − {b_name}**, each side at its best (test "
                  "accuracy, points; paired Δ ± SE over each draw's seeds (n); over the "
                  "draws: the mean of their Δ, its SE from the seeds and from the spread "
                  "between the draws)", "",
                  "| context | " + " | ".join(f"{name}: at | {name}: paired Δ ± SE (n)"
                                             for name, _, _ in draws)
                  + " | mean Δ | SE (seeds) | SE (draws) | \\|Δ\\|/larger SE |",
                  "|" + "---|" * (5 + 2 * len(draws))]
        for key in keys:
            cells, diffs = [", ".join(f"{t} {format_value(v)}" for t, v in key) or "—"], []
            for f in found:
                ra, rb = f[key]
                diff = paired_difference(ra, rb)
                diffs.append(diff)
                cells += [f"{swept_value(ra)} / {swept_value(rb)}",
                          f"{fmt_difference(*diff[:2])[0]} ({diff[2]})"]
            mean, se_seeds, se_draws = over_draws(diffs)
            larger = max(se_seeds, se_draws) if not math.isnan(se_draws) else se_seeds
            cells += [f"{100 * mean:+.2f}" if not math.isnan(mean) else "—",
                      f"{100 * se_seeds:.2f}" if not math.isnan(se_seeds) else "—",
                      f"{100 * se_draws:.2f}" if not math.isnan(se_draws) else "—",
                      f"{abs(mean) / larger:.1f}" if larger and not math.isnan(larger)
                      and not math.isnan(mean) else "—"]
            lines.append(f"| {' | '.join(cells)} |")
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
    for key, members in sorted(curves.items(), key=lambda kv: sort_key(kv[1][0], line_tags)):
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
    for r in sorted(rows, key=lambda r: sort_key(r, group_tags)):
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
    rows = sorted(rows, key=lambda r: sort_key(r, exp.tag_names))
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


def series_groups(exp: ExperimentResults) -> tuple[list, list[str]]:
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
    groups, names = series_groups(exp)
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


