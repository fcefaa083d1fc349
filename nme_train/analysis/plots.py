"""Plots of a sweep's results: accuracy against the swept value, paired contrasts, probe
figures over training, traces by layer (docs/analysis.md)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from nme_train import storage
from nme_train.analysis.results import ExperimentResults, probe_series
from nme_train.analysis.stats import HYPERPARAMETERS, LABELS, contrast_pairs, paired_difference
from nme_train.analysis.tables import series_groups, sort_key
from nme_train.sweeps.grids import format_value


def label_of(tags: dict, names: Sequence[str]) -> str:
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
            lines.setdefault(label_of(r, line_tags), []).append(r)
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
                   color="grey", label=f"none{', ' if others else ''}{label_of(r, others)}"
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
            _plot_band(ax, runs, name, label_of(dict(key), line_tags), alpha=0.2)
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
        for ra, rb in contrast_pairs(exp, rows, tag, a, b):
            diff, se, n = paired_difference(ra, rb)
            if x in ra and n:
                label = label_of(ra, [t for t in exp.tag_names if t not in (tag, x)])
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
    groups, names = series_groups(exp)
    if not fields or not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fields), figsize=(5.2 * len(fields), 4.2), squeeze=False)
    for ax, name in zip(axes[0], fields):
        for key, runs in groups:
            _plot_band(ax, runs, name, label_of(dict(key), names), alpha=0.15)
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
        for i, r in enumerate(sorted(rows, key=lambda r: sort_key(r, group_tags))):
            values = [r.get(f"{kind}_layers", {}).get(layer, {}).get("last", (math.nan,) * 2)
                      for layer in layers]
            ax.bar([j + i * width for j in range(len(layers))], [m for m, _ in values], width,
                   yerr=[0 if math.isnan(s) else s for _, s in values],
                   label=label_of(r, group_tags))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
        ax.set_xticklabels(layers, rotation=30, fontsize=7)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"Tr {kind} by layer, last probe (± std over seeds)", fontsize=9)
    axes[0][0].legend(fontsize=6)
    return _save(fig, os.path.join(out, f"summary_{exp.name}_layers.png"), None)


