"""Summaries of a sweep (nme_train.analysis, through nme-summarize) on fake runs: means,
differences, traces."""

import json
import math

import pytest
from conftest import assert_plot

from nme_train.analysis.stats import paired_difference
from nme_train.commands import summarize
from nme_train.train.rundir import DIVERGED_FILE, FINAL_FILE

pytestmark = pytest.mark.slow



def test_summarize_mean_and_std_over_seeds_on_fake_runs(tmp_path):
    w = tmp_path / "w"
    points = []
    for act, accs in (("relu", (0.80, 0.90)), ("gelu", (0.70, 0.74))):
        for seed, acc in enumerate(accs):
            tags = {"activation": act, "method": "gp", "rho": 0.1, "seed": seed}
            points.append(fake_run(w, f"{act}-{seed}", tags, acc))
    tags = {"activation": "relu", "method": "none", "rho": 0.0, "seed": 0}
    points.append(fake_run(w, "none-0", tags, 0.6))
    points.append({"name": "pending", "tags": {**tags, "seed": 1}})  # never ran
    points.append(fake_run(w, "gn-0", {"activation": "relu", "method": "gn_trace",
                                       "sigma2": 0.01, "seed": 0}, 0.7))  # another tag
    write_manifest(w, "e1", {"kind": "final", "x": "rho", "lines": ("method", "activation"),
                             "zoom_range": [60, 90], "zoom_x": [0.05, 0.2]}, points)
    assert summarize.main([str(w)]) == 0
    table = (w / "summary_e1.md").read_text()
    assert "| relu | gp | 0.1 | — | 2 | 85.00 ± 7.07 |" in table  # std with ddof 1
    assert "| gelu | gp | 0.1 | — | 2 | 72.00 ± 2.83 |" in table
    assert "| relu | none | 0 | — | 1 | 60.00 |" in table
    assert "1 run(s) of this grid have not finished" in table
    rows = (w / "summary_e1.csv").read_text().splitlines()
    assert "| relu | gn_trace | — | 0.01 | 1 | 70.00 |" in table
    assert rows[0].startswith("activation,method,rho,sigma2,seeds,diverged,test_acc_mean")
    assert len(rows) == 5
    assert_plot(w / "summary_e1.png")


def test_summarize_differences_tolerance_and_diverged_runs(tmp_path):
    """Δ vs the plain run with its SE, contrasts between curves, the 1-point tolerance."""
    w = tmp_path / "w"
    points = []
    accuracies = {("relu", "none", 0.0): (0.86, 0.87, 0.88),
                  ("relu", "gp", 0.3): (0.85, 0.86, 0.87), ("relu", "gp", 1.0): (0.50, 0.60),
                  ("gelu", "none", 0.0): (0.86, 0.88, 0.90),
                  ("gelu", "gp", 0.3): (0.87, 0.88, 0.89), ("gelu", "gp", 1.0): (0.86, 0.87)}
    for (act, method, rho), accs in accuracies.items():
        for seed, acc in enumerate(accs):
            tags = {"bn": False, "activation": act, "method": method, "rho": rho, "seed": seed}
            probes = [{"step": 0, "dead_units/mean": 0.1}, {"step": 5, "dead_units/mean": acc}]
            points.append(fake_run(w, f"{act}-{method}-{rho}-{seed}", tags, acc, probes))
            cpu = "B" if (act, seed) == ("gelu", 2) else "A"  # one pair ran on two machines
            (w / points[-1]["name"] / "machines.jsonl").write_text(json.dumps(
                {"host": "h", "cpu": cpu, "cpu_flags_sha256": "f"}) + "\n")
    for act in ("relu", "gelu"):  # each rho=1 curve has a third seed that diverged
        tags = {"bn": False, "activation": act, "method": "gp", "rho": 1.0, "seed": 2}
        run = w / f"{act}-diverged"
        run.mkdir()
        (run / DIVERGED_FILE).write_text(json.dumps({"step": 17, "loss": "nan"}))
        points.append({"name": run.name, "tags": tags})
    write_manifest(w, "e1", {"kind": "final", "x": "rho", "lines": ("method", "activation"),
                             "panels": "bn", "symlog_x": 0.1, "zoom": 6,
                             "contrasts": [["activation", "gelu", "relu"]],
                             "series": ["dead_units/mean"], "series_at": [0.3]}, points)
    assert summarize.main([str(w)]) == 0
    table = (w / "summary_e1.md").read_text()
    # relu gp 0.3: 86 - 87 = -1 point; SE = sqrt(1^2/3 + 1^2/3) = 0.816 points
    assert "| false | relu | gp | 0.3 | 3 | 0 | 86.00 ± 1.00 |" in table
    assert "| -1.00 ± 0.82 | 1.2 |" in table
    assert "| false | relu | gp | 1 | 2 | 1 | 55.00 ± 7.07 |" in table  # 1 diverged
    # relu: 0.3 is exactly 1 point below; at 1 it falls. gelu: 1 fails by its diverged seed
    assert "| false | relu | gp | 87.00 | 0.3 | 1 (-32.00, diverged 1) |" in table
    assert "| false | gelu | gp | 88.00 | 0.3 | 1 (-1.50, diverged 1) |" in table
    # gelu - relu at gp 0.3: +2 points, SE 0.816; paired: +2 on every seed, SE 0
    assert "| false | gp | 0.3 | +2.00 ± 0.82 | 2.4 | 3 | +2.00 ± 0.00 | inf | 2/3 |" in table
    # each at its best rho: gp 0.3 on both sides (86 and 88 against 55 and 86.5); the plain
    # runs: per-seed differences 0, 1, 2, mean 1, SE 1 / sqrt(3)
    assert "| false | gp | ρ 0.3 | ρ 0.3 | 3 | +2.00 ± 0.00 | inf | 2/3 |" in table
    assert "| false | none | ρ 0 | ρ 0 | 3 | +1.00 ± 0.58 | 1.7 | 2/3 |" in table
    # the series' numbers, at rho 0.3 and for the plain runs only: hand-computed means, stds
    series = table.split("**Probes over training** at ρ 0.3")[1]
    assert "| false | relu | gp | 0 | 0.100 ± 0.000 |" in series
    assert "| false | relu | gp | 5 | 0.860 ± 0.010 |" in series
    assert "| false | gelu | none | 5 | 0.880 ± 0.020 |" in series
    # 4 groups (gp at 0.3 and none, for each activation) x 2 steps: rho 1's are left out
    assert len([line for line in series.splitlines() if line.startswith("| false |")]) == 8
    assert_plot(w / "summary_e1.png")
    assert_plot(w / "summary_e1_contrasts.png")
    assert_plot(w / "summary_e1_series.png")


def test_summarize_traces_and_sparsity_on_fake_runs(tmp_path):
    w = tmp_path / "w"
    points = []
    for seed in (0, 1):
        probes = [{"step": s, "hessian/trace": 10.0 - s - seed, "gauss_newton/trace": 5.0,
                   "nme/trace": 5.0 - s - seed,
                   "nme/trace_by_layer": {"Conv_0/kernel": 1.0 + seed, "BatchNorm_0/scale": s,
                                          "BatchNorm_0/bias": 0.5}} for s in (0, 5, 10)]
        points.append(fake_run(w, f"h{seed}", {"method": "hessian_trace", "sigma2": 0.01,
                                               "seed": seed}, 0.5, probes))
    write_manifest(w, "e6", {"kind": "traces", "lines": ("method",),
                             "y": ("hessian/trace", "gauss_newton/trace", "nme/trace")}, points)
    points = []
    for beta, (before, after) in ((1.0, (0.9, 0.8)), (64.0, (0.2, 0.05))):
        for seed in (0, 1):
            probes = [{"step": 0, "sparsity/mean": before}, {"step": 9, "sparsity/mean": after}]
            points.append(fake_run(w, f"b{beta}-{seed}", {"beta": beta, "method": "none",
                                                          "rho": 0.0, "seed": seed}, 0.5, probes))
    write_manifest(w, "e9", {"kind": "sparsity", "x": "beta", "log_x": True}, points)
    assert summarize.main([str(w)]) == 0
    traces = (w / "summary_e6.md").read_text()
    # Tr NME: first 5 / 4 (mean 4.5), last -5 / -6 (mean -5.5), its minimum the last
    assert "| 4.5 ± 0.7 | -5.5 ± 0.7 | -5.5 ± 0.7 |" in traces
    # per layer (the leaves of a layer summed): BatchNorm_0 = scale + bias, 0.5 then 10.5
    assert "| hessian_trace | 0.01 | BatchNorm_0 | — | — | — | — | 0.50 ± 0.00 | 10.50 ± 0.00 |" \
        in traces
    assert "| hessian_trace | 0.01 | Conv_0 | — | — | — | — | 1.50 ± 0.71 | 1.50 ± 0.71 |" in traces
    assert_plot(w / "summary_e6_layers.png")
    sparsity = (w / "summary_e9.md").read_text()
    assert "| 64 | none | 0 | 2 | 50.00 ± 0.00 |" in sparsity and "| 20.00 ± 0.00 | 5.00 ± 0.00 |" \
        in sparsity
    for name in ("e6", "e9"):
        assert_plot(w / f"summary_{name}.png")
    assert summarize.main([str(tmp_path / "empty")]) == 2


def fake_run(workdir, name, tags, accuracy, probes=()):
    run = workdir / name
    run.mkdir(parents=True)
    (run / FINAL_FILE).write_text(json.dumps({
        "eval/accuracy": accuracy, "eval/loss": 1.0 - accuracy, "train/loss": 0.5,
        "train/wall_time_sec": 10.0}))
    (run / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    return {"name": name, "tags": tags}


def write_manifest(workdir, name, plot, points):
    (workdir / f"sweep_{name}.json").write_text(json.dumps(
        {"experiment": name, "config": f"configs/paper/{name}.py", "scale": "study",
         "plot": plot, "points": points}))


def test_paired_difference_over_shared_seeds_by_hand():
    """Seeds 0-2 shared (seed 3 only in one arm): differences 0.02, 0.01, 0.03 -> mean 0.02,
    std 0.01, SE 0.01 / sqrt 3; the unpaired SE of the same numbers is far larger."""
    a = {"test_acc_by_seed": {0: 0.82, 1: 0.71, 2: 0.93, 3: 0.5}}
    b = {"test_acc_by_seed": {0: 0.80, 1: 0.70, 2: 0.90}}
    diff, se, n = paired_difference(a, b)
    assert (n, round(diff, 12), round(se, 12)) == (3, 0.02, round(0.01 / 3 ** 0.5, 12))
    assert math.isnan(paired_difference(a, {"test_acc_by_seed": {}})[0])


def test_contrasts_over_two_data_draws_by_hand(tmp_path):
    """gp − sam at each side's best on two draws: draw a (gp best at rho 0.2) Δ 0.05, 0.06
    -> +5.50 ± 0.50; draw b +3.00 ± 1.00; over both +4.25, SE from the seeds
    sqrt(0.5² + 1²) / 2 = 0.56, from the draws' spread |5.5 − 3| / 2 = 1.25, ratio 3.4."""
    plot = {"kind": "final", "x": "rho", "lines": ("method",),
            "contrasts": [["method", "gp", "sam"]]}
    runs = {"a": {("gp", 0.1): (0.80, 0.82), ("gp", 0.2): (0.85, 0.87), ("sam", 0.1): (0.80, 0.81)},
            "b": {("gp", 0.2): (0.84, 0.88), ("sam", 0.1): (0.82, 0.84)}}
    for draw, arms in runs.items():
        w = tmp_path / draw
        points = [fake_run(w, f"method={m},rho={rho},seed={s}",
                           {"method": m, "rho": rho, "seed": s}, acc)
                  for (m, rho), accs in arms.items() for s, acc in enumerate(accs)]
        write_manifest(w, "e1", plot, points)
    out = tmp_path / "out"
    assert summarize.main([str(tmp_path / "a"), "--draws", str(tmp_path / "b"),
                           "--out", str(out)]) == 0
    text = (out / "summary_e1_draws.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| — |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    separator = next(line for line in text.splitlines() if line.startswith("|---"))
    assert separator.count("---") == len(cells) == 9
    assert cells[1:] == ["ρ 0.2 / ρ 0.1", "+5.50 ± 0.50 (2)", "ρ 0.2 / ρ 0.1",
                         "+3.00 ± 1.00 (2)", "+4.25", "0.56", "1.25", "3.4"]
    # a draw without the experiment's sweep is one error line
    (tmp_path / "c").mkdir()
    assert summarize.main([str(tmp_path / "a"), "--draws", str(tmp_path / "c")]) == 2
