"""A sweep's results: its manifest, its runs' final metrics and probe records, by group.

nme_train.sweeps writes DIR/sweep_<experiment>.json (the points and the experiment file's
PLOT settings, docs/analysis.md) and each run writes DIR/<point>/final.json, or
diverged.json when its loss became non-finite. `ExperimentResults` groups the points by
their tags except the seed: finished runs are averaged, diverged ones counted, unfinished
ones counted as pending.
"""

from __future__ import annotations

import json
import math
import os
import statistics

from nme_train import storage
from nme_train.analysis.stats import SWEPT, difference, mean_std, paired_difference
from nme_train.train.probing import read_probes
from nme_train.train.rundir import machine_key, read_diverged, read_final, read_machines


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


def probe_series(runs: list[dict], name: str) -> dict[int, tuple[float, float]]:
    """The probe figure `name` of `runs` by step: {step: (mean, std) over runs}, at the
    steps every run probed."""
    series = [{p["step"]: p[name] for p in read_probes(r["dir"]) if name in p} for r in runs]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    return {t: mean_std([s[t] for s in series]) for t in steps}


