"""Statistics over seeds: means, unpaired and paired differences, the pairs a contrast
compares.

A seed fixes the initialisation, the data order and the augmentation, so two runs of one
seed differ only in what the grid changes: the paired difference (the mean over shared
seeds of the per-seed differences, SE = their std / sqrt(n)) removes the seed-to-seed
variation both share. Rows are nme_train.analysis.results.ExperimentResults.rows().
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

HYPERPARAMETERS = ("rho", "sigma2")
SWEPT = HYPERPARAMETERS + ("probes",)  # tags a method carries with it
TOLERANCE = 1.0  # points of test accuracy, for the "largest value within" table
LABELS = {"sigma2": "σ²", "rho": "ρ", "beta": "β"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than 2 values)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


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


def over_draws(diffs: Sequence[tuple[float, float, int]]) -> tuple[float, float, float]:
    """One contrast on k data draws, each a paired difference (Δ, SE over its seeds, n):
    the mean of the draws' Δ, the SE of that mean from the seeds (sqrt(sum SE^2) / k) and
    the SE from the spread of the draws (their std / sqrt(k): one degree of freedom with
    two draws; nan with one). A draw-to-draw effect beyond the seeds' shows as the second
    exceeding the first."""
    if not diffs or any(n == 0 or math.isnan(d) for d, _, n in diffs):
        return math.nan, math.nan, math.nan
    k = len(diffs)
    values = [d for d, _, _ in diffs]
    se_seeds = math.sqrt(sum(se**2 for _, se, _ in diffs)) / k
    se_draws = statistics.stdev(values) / math.sqrt(k) if k > 1 else math.nan
    return statistics.fmean(values), se_seeds, se_draws


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


def contrast_pairs(exp: Any, rows: list[dict], tag: str, a, b
                    ) -> list[tuple[dict, dict]]:
    """(row A, row B) for the groups with TAG = A and TAG = B (B None: without TAG) whose other
    tags agree."""
    others = [t for t in exp.tag_names if t != tag]
    return [(ra, rb) for ra in rows if ra.get(tag) == a for rb in rows
            if (rb.get(tag) == b if b is not None else tag not in rb)
            and all(ra.get(t) == rb.get(t) for t in others if t in rb)]


def best_pairs(exp: Any, rows: list[dict], tag: str, a, b
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


