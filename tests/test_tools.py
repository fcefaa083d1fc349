"""The benchmark tools run (tiny settings; their figures are in docs/benchmarks.md)."""

import json
import os
import subprocess

import numpy as np
import pytest
from conftest import ROOT, run_command, tool

pytestmark = pytest.mark.slow


def run_tool(*args):
    result = run_command(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_step_reports_a_ratio():
    out = run_tool("tools/bench_step.py", "--steps", "3", "--rounds", "2")
    assert 0.2 < out["ratio"] < 5  # the same program; far off means one side is not timed


def test_bench_checkpoint_reports_the_save_step():
    out = run_tool("tools/bench_checkpoint.py", "--steps", "40", "--every", "20")
    # a save step costs at least the on-device copy, and is not 100x a step on a tiny model
    assert 0.5 < out["save_step_ratio"] < 100


def test_bench_accumulation_reports_time_and_memory_per_k():
    out = run_tool("tools/bench_accumulation.py", "--ks", "1", "2", "--steps", "2",
                   "--rounds", "2", "--batch_size", "64")
    assert sorted(out["k"]) == ["1", "2"] and out["k"]["1"]["time_ratio"] == 1.0
    # half the microbatch: fewer temporaries, the same parameters and optimizer state
    assert out["k"]["2"]["temp_mib"] < out["k"]["1"]["temp_mib"]
    assert 0.2 < out["k"]["2"]["time_ratio"] < 5


def test_bench_regularizers_reports_each_method():
    from nme_train.sweeps.grids import regularizer_entry

    out = run_tool("tools/bench_regularizers.py", "--config", "configs/default.py",
                   "--rounds", "1", "--methods",
                   "plain,sam,gradient_penalty,gn_trace_sampled_labels,gn_trace_hutchinson")
    # each row times the sweeps' method of its name (the two estimators are two programs)
    as_run = {name: [[n, kw] for n, kw in row["regularizers"]] for name, row in out.items()}
    assert as_run == {name: [list(e) for e in entry] for name, entry in {
        "plain": (), "sam": regularizer_entry("sam", 0.05),
        "gradient_penalty": regularizer_entry("gp", 0.1),
        "gn_trace_sampled_labels": regularizer_entry("gn_trace_sampled", 0.02),
        "gn_trace_hutchinson": regularizer_entry("gn_trace", 0.02)}.items()}
    assert as_run["gn_trace_sampled_labels"][0][1]["estimator"] == "sampled_labels"
    for name in ("sam", "gradient_penalty"):  # two gradients: more memory (XLA's analysis)
        assert out[name]["temp_mib"] > out["plain"]["temp_mib"], (name, out)


def test_bench_pipeline_measures_each_setting(imagenet_dir, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = run_command("tools/bench_pipeline.py", "--data_dir", imagenet_dir, "--workers",
                         "0", "--paths", "full,crop", "--decoders", "pil,simplejpeg", "--batch",
                         "4", "--steps", "12", "--warmup", "8", "--rounds", "2",
                         "--profile_images", "12", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    rates, profiles = rows[:4], rows[4:]
    assert [(r["path"], r["decoder"], r["workers"], r["rounds"]) for r in rates] == [
        ("full", "pil", 0, 2), ("full", "simplejpeg", 0, 2), ("crop", "pil", 0, 2),
        ("crop", "simplejpeg", 0, 2)]
    for r in rates:  # the read-ahead buffer drained (8 batches), decoding takes some cores,
        assert 0 < r["busy_cores"] <= os.cpu_count() + 0.5  # at most the machine's
    assert [p["decoder"] for p in profiles] == ["pil", "simplejpeg"]
    for p in profiles:
        for path in ("full", "crop"):
            stages = {k: v for k, v in p[path].items() if k not in ("sum", "transform")}
            assert all(v > 0 for v in stages.values())
            assert p[path]["sum"] == pytest.approx(sum(stages.values()))
        # 40-90 px images and 224 px crops: no DCT scale applies, the training crops are
        # those of the full path exactly; evaluation resamples once instead of twice
        assert p["scale_shares"] == [1.0, 0.0, 0.0, 0.0] and p["train_mad"] == 0
        assert 0 < p["eval_mad"] < 2
    assert "best:" in result.stdout and "crops decoded at scale" in result.stdout
    bad = run_command("tools/bench_pipeline.py", "--data_dir", imagenet_dir, "--paths", "roi")
    assert bad.returncode == 1 and "--paths 'roi'" in bad.stderr


def test_bench_probes_costs_the_e6_probe(tmp_path):
    """From the dry run's FLOP counts (the measured path, RunProbes on a given batch, runs in
    test_accelerator_check_runs_every_part_in_smoke_mode)."""
    out = tmp_path / "rows.jsonl"
    result = run_command("tools/bench_probes.py", "--config", "configs/default.py",
                         "--flops_only", "--lanczos", "4,6", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["lanczos_steps"] for r in rows] == [4, 6]
    for r in rows:
        assert r["every_for_5_percent_flops"] >= 19 * r["probe_cost_steps_flops"]
    # two more Lanczos steps: two more products of each of H, G and NME
    assert rows[1]["probe_cost_steps_flops"] > rows[0]["probe_cost_steps_flops"]
    bad = run_command("tools/bench_probes.py", "--config", "configs/default.py", "--set",
                      "model.nope=1")
    assert bad.returncode == 1 and bad.stderr.startswith("bench_probes: error:")


def test_relative_bounds_of_a_known_tridiagonal():
    """T = [[3, b], [b, 1]]: eigenvalues 2 +- sqrt(1 + b^2); after one step the Ritz value
    is 3 with bound |b|, after two the exact values with bound 0 (beta_2 = 0)."""
    relative_bounds = tool("bench_probes").relative_bounds

    b = 0.5
    record = {"hessian/lanczos": {"alphas": [3.0, 1.0], "betas": [b, 0.0]}}
    assert relative_bounds(record, "hessian", 1, 1) == pytest.approx(b / 3.0)
    assert relative_bounds(record, "hessian", 2, 2) == pytest.approx(0.0, abs=1e-15)


def test_bench_curvature_reports_each_ratio_over_rounds():
    out = run_tool("tools/bench_curvature.py", "--config", "configs/default.py",
                   "--batch_size", "32", "--rounds", "3", "--m1", "2", "--m2", "3",
                   "--steps", "6", "--kinds", "hessian")
    assert len(out["gradient_rounds_s"]) == 3  # every measurement in each round
    # one H.v costs more than nothing and less than 20 gradients (it is about 2 to 4)
    assert 0 < out["hessian"]["ratios"]["single"]["median"] < 20


def test_bench_matfree_agrees_with_the_dense_hessian_on_both_sides():
    """Both libraries' Ritz values against numpy's eigenvalues of the dense float64 Hessian,
    and matfree's Hutchinson estimate on the vectors ours draws, equal to ours."""
    out = run_tool("tools/bench_matfree.py", "accuracy", "--probes", "4", "--slq_steps", "8")
    assert out["parameters"] == 99 and out["steps"] == 40
    assert out["nme_train/ritz_abs_error"] < 1e-12
    assert out["matfree/ritz_abs_error"] < 1e-12
    assert out["same_vectors_trace_rel_difference"] < 1e-12
    # with other vectors the two estimates differ by sampling error only (4 probes: loose)
    assert out["nme_train/trace_rel_error"] < 1 and out["matfree/trace_rel_error"] < 1


def test_accelerator_check_runs_every_part_in_smoke_mode(tmp_path):
    """The accelerator script, shrunk onto the CPU: a synthetic ImageNet feeding a
    ResNet-50 step, a probe of it, the numerics check, the step with accumulation and its
    trace, the update by source's arms at the ImageNet scale; one JSON line each."""
    result = run_command("tools/accelerator_check.py", "--smoke", "--out", str(tmp_path),
                         timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in
            (tmp_path / "accelerator_check.jsonl").read_text().splitlines()]
    assert [r["part"] for r in rows] == ["pipeline", "probe", "numerics", "accumulation",
                                         "arms"]
    pipeline, probe, numerics, accumulation, arms = rows
    assert pipeline["images_per_s_real_decoding"] > 0 and pipeline["images_per_s_synthetic"] > 0
    assert os.path.isdir(tmp_path / "data" / "imagenet2012")
    # (smoke: H alone, the penalty at the largest k alone: fewer compiles)
    assert probe["hessian"]["error_bound"] >= 0 and probe["hessian"]["trace_se"] > 0
    assert abs(probe["hessian"]["top"]) > 0 and "gauss_newton" not in probe
    assert probe["matvecs"] == 2 + 6 + 10  # determinism, Lanczos, traces
    assert set(numerics["relative_errors"]) == {"float32/default", "bfloat16/default"}
    assert [r["k"] for r in accumulation["plain"]] == [1, 2]
    assert accumulation["plain"][1]["time_ratio_to_k1"] > 0
    assert [r["k"] for r in accumulation["gradient_penalty"]] == [2]
    for name in ("plain", "gradient_penalty"):
        assert all(r["step_s"] > 0 and r["xla_peak_gib"] > 0 for r in accumulation[name])
    assert any(f.endswith(".xplane.pb") for f in accumulation["trace"]["files"])
    # the update by source's arms at the ImageNet scale, each on its own regularizer
    updates = {point: arm["regularizers"][0][1] for point, arm in arms["arms"].items()}
    assert updates == {"activation=gelu,method=gp_nme_act,rho=0.1,seed=0":
                           {"rho": 0.1, "update": "G+NME_act"},
                       "activation=relu,method=gp_no_nme,rho=0.1,seed=0":
                           {"rho": 0.1, "nme": False}}
    for arm in arms["arms"].values():
        assert arm["step_s"] > 0 and arm["xla_peak_gib"] > 0
        assert len(arm["losses"]) == 4 and all(np.isfinite(arm["losses"]))


def test_pack_runs_keeps_finished_runs_small_files_only(tmp_path):
    import tarfile

    root = tmp_path / "study"
    for name, marker in [("a", "final.json"), ("b", "diverged.json"), ("c", None)]:
        run = root / "grid" / name
        (run / "checkpoints" / "10").mkdir(parents=True)
        (run / "checkpoints" / "10" / "big").write_text("x")
        for f in ("config.json", "metrics.jsonl", "point.json", "machines.jsonl"):
            (run / f).write_text("{}")
        if marker:
            (run / marker).write_text("{}")
    (root / "grid" / "sweep_e1.json").write_text("{}")
    out = tmp_path / "runs.tar.xz"
    subprocess.run(["bash", os.path.join(ROOT, "tools", "pack_runs.sh"), str(root), str(out)],
                   check=True, capture_output=True)
    with tarfile.open(out) as tar:
        names = sorted(tar.getnames())
    assert names == ["grid/a/config.json", "grid/a/final.json", "grid/a/machines.jsonl",
                     "grid/a/metrics.jsonl", "grid/a/point.json", "grid/b/config.json",
                     "grid/b/diverged.json", "grid/b/machines.jsonl", "grid/b/metrics.jsonl",
                     "grid/b/point.json", "grid/sweep_e1.json"]


def test_every_console_command_names_a_callable():
    import importlib
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    for command, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command


def test_sweep_cost_adds_up_each_groups_flops(tmp_path):
    """tools/sweep_cost.py on a 2-method x 2-seed grid of the digits MLP: one group per
    program, steps and probes from the config, hours = FLOPs / rate; the plain step's count
    against the matrix products written out by hand."""
    from test_sweep import tiny_experiment

    rate = 2.0
    cost = run_tool("tools/sweep_cost.py", "--config", tiny_experiment(tmp_path, str(tmp_path)),
                    "--tflops", str(rate), "--set", "probes.every_steps=3", "--json")
    groups = {g["group"]["method"]: g for g in cost["groups"]}
    assert set(groups) == {"none", "gp"} and cost["points"] == 4
    for g in groups.values():
        assert (g["points"], g["steps"], g["batch_size"], g["probes"]) == (2, 6, 64, 3)
        assert g["probe_flops"] > 0
        assert g["hours_per_run"] == pytest.approx(
            (6 * g["step_flops"] + 3 * g["probe_flops"]) / (rate * 1e12) / 3600)
    assert cost["hours"] == pytest.approx(sum(2 * g["hours_per_run"] for g in groups.values()))
    # 64 -> 16 -> 10, batch 64: forward 2B(64*16 + 16*10); backward the weight gradients
    # of both layers and the input gradient of the second; the rest is elementwise
    matmuls = 2 * 64 * (2 * 64 * 16 + 3 * 16 * 10)
    assert matmuls <= groups["none"]["step_flops"] <= 1.25 * matmuls
    # the penalty's step adds a Hessian-vector product: about twice to three times plain
    assert 1.8 <= groups["gp"]["step_flops"] / groups["none"]["step_flops"] <= 3.5
    # identical programs (the seeds) are costed once: the probe is the same for both
    assert groups["none"]["probe_flops"] == groups["gp"]["probe_flops"]
    bad = run_command("tools/sweep_cost.py", "--config", tiny_experiment(tmp_path, str(tmp_path)),
                      "--set", "probes.bogus=3")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --set has no field")
    assert len(bad.stderr.strip().splitlines()) == 1
