"""Gather a sweep's results into tables (markdown + CSV, mean ± std over seeds) and a plot.

    python tools/summarize.py DIR                      # every experiment swept into DIR
    python tools/summarize.py DIR --experiment e1      # one of them
    python tools/summarize.py DIR --out docs/results   # where the files go (default DIR)

Reads DIR/sweep_<experiment>.json (written by tools/sweep.py), each run's
DIR/<point>/final.json (a finished run's final metrics) and, for the probe
experiments, DIR/<point>/probes.jsonl. Points are grouped by their tags
except the seed; unfinished runs are counted, not averaged. Writes, per
experiment, summary_<experiment>.md, .csv and .png:

  kind "final"     test accuracy against the swept hyperparameter (rho,
                   sigma^2 or beta), one line per method/activation, error
                   bars ± std over seeds; the unregularized runs of a
                   rho/sigma^2 sweep are drawn as dashed horizontal lines
  kind "traces"    Tr H, Tr G and Tr NME (Hutchinson) against the training
                   step, one line per method (mean over seeds, band ± std)
  kind "sparsity"  the mean over layers of the fraction of |sigma''| above
                   the threshold, at the first and the last probe, against beta
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nme_train.experiments import format_value, read_final  # noqa: E402

HYPERPARAMETERS = ("rho", "sigma2")


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


def read_probes(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "probes.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Experiment:
    """One sweep manifest and its runs, grouped by tags without the seed."""

    def __init__(self, workdir: str, manifest_path: str):
        with open(manifest_path, encoding="utf-8") as f:
            self.manifest = json.load(f)
        self.name = self.manifest["experiment"]
        self.plot = self.manifest.get("plot", {"kind": "final"})
        self.groups: dict[tuple, list[dict]] = {}
        self.pending = 0
        for point in self.manifest["points"]:
            tags = dict(point["tags"])
            seed = tags.pop("seed", None)
            run_dir = os.path.join(workdir, point["name"])
            final = read_final(run_dir)
            if final is None:
                self.pending += 1
                continue
            key = tuple(tags.items())
            self.groups.setdefault(key, []).append(
                {"seed": seed, "final": final, "dir": run_dir})
        self.tag_names: list[str] = []  # in order of appearance: methods differ in their
        for point in self.manifest["points"]:  # hyperparameter's name (rho, sigma2)
            self.tag_names += [k for k in point["tags"] if k != "seed" and k not in
                               self.tag_names]

    def rows(self) -> list[dict]:
        """One row per group: its tags, the number of seeds and the figures."""
        kind = self.plot.get("kind", "final")
        rows = []
        for key, runs in self.groups.items():
            row: dict = {**dict(key), "seeds": len(runs)}
            acc = [r["final"]["eval/accuracy"] for r in runs]
            row["test_acc_mean"], row["test_acc_std"] = mean_std(acc)
            loss = [r["final"]["eval/loss"] for r in runs]
            row["test_loss_mean"], row["test_loss_std"] = mean_std(loss)
            train = [r["final"].get("train/loss", math.nan) for r in runs]
            row["train_loss_mean"], row["train_loss_std"] = mean_std(train)
            wall = [r["final"].get("train/wall_time_sec", math.nan) for r in runs]
            row["wall_s_mean"] = statistics.fmean(wall)
            if kind == "traces":
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
            if kind == "sparsity":
                before, after = [], []
                for r in runs:
                    records = [p for p in read_probes(r["dir"]) if "sparsity/mean" in p]
                    if records:
                        before.append(records[0]["sparsity/mean"])
                        after.append(records[-1]["sparsity/mean"])
                row["sparsity_init_mean"], row["sparsity_init_std"] = mean_std(before)
                row["sparsity_final_mean"], row["sparsity_final_std"] = mean_std(after)
            rows.append(row)
        return rows


def _sort_key(row: dict, tag_names: Sequence[str]) -> tuple:
    return tuple((0, row[t], "") if isinstance(row.get(t), (int, float))
                 else (1, 0, str(row.get(t, ""))) for t in tag_names)


def write_tables(exp: Experiment, rows: list[dict], out: str) -> tuple[str, str]:
    rows = sorted(rows, key=lambda r: _sort_key(r, exp.tag_names))
    csv_path = os.path.join(out, f"summary_{exp.name}.csv")
    columns = list(exp.tag_names) + [k for k in (rows[0] if rows else {})
                                     if k not in exp.tag_names]
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    kind = exp.plot.get("kind", "final")
    header = list(exp.tag_names) + ["seeds", "test accuracy (%)", "test loss", "train loss"]
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
    header += [h for h, _, _ in extra] + ["wall s"]
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [format_value(r[t]) if t in r else "—" for t in exp.tag_names]
        cells.append(str(r["seeds"]))
        cells.append(fmt(r["test_acc_mean"], r["test_acc_std"], 100.0))
        cells.append(fmt(r["test_loss_mean"], r["test_loss_std"], digits=4))
        cells.append(fmt(r["train_loss_mean"], r["train_loss_std"], digits=4))
        cells += [fmt(r[f"{key}_mean"], r[f"{key}_std"], scale, digits=1 if scale == 1.0
                      else 2) for _, key, scale in extra]
        cells.append(f"{r['wall_s_mean']:.0f}")
        lines.append(f"| {' | '.join(cells)} |")
    if exp.pending:
        lines.append(f"\n{exp.pending} run(s) of this grid have not finished.")
    md_path = os.path.join(out, f"summary_{exp.name}.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(f"{exp.name} ({exp.manifest['config']}:{exp.manifest['scale']}); mean ± std "
                "over seeds\n\n" + "\n".join(lines) + "\n")
    return md_path, csv_path


def _label(tags: dict, names: Sequence[str]) -> str:
    return ", ".join(format_value(tags[n]) for n in names if n in tags) or "all"


def plot(exp: Experiment, rows: list[dict], out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = exp.plot.get("kind", "final")
    path = os.path.join(out, f"summary_{exp.name}.png")
    title = f"{exp.name}: {exp.manifest['config']}:{exp.manifest['scale']}"
    if kind == "traces":
        names = exp.plot["y"]
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4))
        for ax, name in zip(axes, names):
            for key, runs in sorted(exp.groups.items()):
                series = [{p["step"]: p[name] for p in read_probes(r["dir"]) if name in p}
                          for r in runs]
                steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
                if not steps:
                    continue
                values = [[s[t] for s in series] for t in steps]
                mean = [statistics.fmean(v) for v in values]
                std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
                line, = ax.plot(steps, mean, marker="o", ms=3,
                                label=_label(dict(key), exp.tag_names))
                ax.fill_between(steps, [m - s for m, s in zip(mean, std)],
                                [m + s for m, s in zip(mean, std)], alpha=0.2,
                                color=line.get_color())
            ax.axhline(0.0, color="grey", lw=0.5)
            ax.set_xlabel("training step")
            ax.set_title(f"Tr {name.split('/')[0]}")
        axes[0].legend(fontsize=7)
    else:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        x = exp.plot["x"]
        rows = [r for r in rows if x in r]  # a method tagged with another hyperparameter
        if kind == "sparsity":
            rows = sorted(rows, key=lambda r: r[x])
            for field, label in (("sparsity_init", "at initialisation"),
                                 ("sparsity_final", "after training")):
                ax.errorbar([r[x] for r in rows], [100 * r[f"{field}_mean"] for r in rows],
                            yerr=[100 * (0 if math.isnan(r[f"{field}_std"])
                                         else r[f"{field}_std"]) for r in rows],
                            marker="o", capsize=3, label=label)
            ax.set_ylabel("pre-activations with |σ''| > threshold (%)")
            ax.legend(fontsize=7)
        else:
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
                ax.errorbar([r[x] for r in members], [100 * r["test_acc_mean"] for r in members],
                            yerr=[0 if math.isnan(r["test_acc_std"]) else 100 * r["test_acc_std"]
                                  for r in members], marker="o", capsize=3, label=label)
            for i, r in enumerate(plain):
                ax.axhline(100 * r["test_acc_mean"], ls=("--", ":", "-.")[i % 3], lw=1,
                           color="grey", label=f"none{', ' if others else ''}{_label(r, others)}"
                           if others else "none")
            ax.legend(fontsize=7)
            ax.set_ylabel("test accuracy (%)")
        ax.set_xlabel({"sigma2": "σ²", "rho": "ρ", "beta": "β"}.get(x, x))
        if exp.plot.get("log_x"):
            ax.set_xscale("log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="the --workdir of tools/sweep.py")
    parser.add_argument("--experiment", default="", help="e.g. e1 (default: every manifest)")
    parser.add_argument("--out", default="", help="output directory (default: the workdir)")
    args = parser.parse_args(argv)
    pattern = f"sweep_{args.experiment or '*'}.json"
    manifests = sorted(glob.glob(os.path.join(args.workdir, pattern)))
    if not manifests:
        print(f"summarize: no {pattern} in {args.workdir} (run tools/sweep.py first)",
              file=sys.stderr)
        return 2
    out = args.out or args.workdir
    os.makedirs(out, exist_ok=True)
    for manifest in manifests:
        exp = Experiment(args.workdir, manifest)
        rows = exp.rows()
        if not rows:
            print(f"summarize: {exp.name}: no finished runs yet ({exp.pending} pending)")
            continue
        md, csv_path = write_tables(exp, rows, out)
        png = plot(exp, rows, out)
        print(f"summarize: {exp.name}: {sum(r['seeds'] for r in rows)} finished run(s) in "
              f"{len(rows)} group(s), {exp.pending} pending -> {md}, {csv_path}, {png}")
        with open(md, encoding="utf-8") as f:
            print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
