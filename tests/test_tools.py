"""The benchmark tools run (tiny settings; their figures are in docs/benchmarks.md)."""

import json
import os
import subprocess

import pytest
from conftest import ROOT, run_command

pytestmark = pytest.mark.slow


def run_tool(*args):
    result = run_command(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_step_reports_a_ratio():
    out = run_tool("tools/bench_step.py", "--steps", "3", "--rounds", "2")
    assert out["ratio"] == pytest.approx(out["framework_ms"] / out["hand_written_ms"])
    assert 0.2 < out["ratio"] < 5  # the same program; far off means one side is not timed


def test_bench_checkpoint_reports_the_save_step():
    out = run_tool("tools/bench_checkpoint.py", "--steps", "40", "--every", "20")
    assert out["save_step_ratio"] == pytest.approx(out["saving_ms"] / out["normal_ms"])
    assert out["normal_ms"] > 0 and out["saving_ms"] > 0


def test_bench_regularizers_reports_each_method():
    out = run_tool("tools/bench_regularizers.py", "--config", "configs/default.py",
                   "--rounds", "1", "--methods", "plain,sam,gradient_penalty")
    assert set(out) == {"plain", "sam", "gradient_penalty"}
    assert out["plain"]["ratio"] == 1.0
    for name in ("sam", "gradient_penalty"):  # two gradients: more time and more memory
        assert out[name]["ratio"] == pytest.approx(out[name]["median_s"]
                                                   / out["plain"]["median_s"])
        assert out[name]["temp_mib"] > out["plain"]["temp_mib"], (name, out)


def test_bench_pipeline_measures_each_setting(imagenet_dir, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = run_command("tools/bench_pipeline.py", "--data_dir", imagenet_dir, "--workers",
                         "0", "--decoders", "pil,simplejpeg", "--batch", "4", "--steps", "4",
                         "--warmup", "2", "--rounds", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["decoder"], r["workers"], r["rounds"]) for r in rows] == [
        ("pil", 0, 2), ("simplejpeg", 0, 2)]
    for r in rows:
        assert r["images_per_s"] > 0 and r["busy_cores"] > 0
        assert r["images_per_core_s_min"] <= r["images_per_core_s"] <= r["images_per_core_s_max"]
        assert r["cores_per_accelerator"] == pytest.approx(6703 / r["images_per_core_s"])
    assert "best:" in result.stdout


def test_bench_probes_costs_the_e6_probe(tmp_path):
    out = tmp_path / "rows.jsonl"
    result = run_command("tools/bench_probes.py", "--config", "configs/default.py",
                         "--set", "model.features=(4, 8)", "--lanczos", "6", "--top_k", "2",
                         "--rounds", "1", "--steps", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["lanczos_steps"] for r in rows] == [6]
    for r in rows:  # E6: H, G, NME; 2 determinism checks, 10 traces, 1 alignment per kind
        assert r["matvecs"] == 3 * (2 + r["lanczos_steps"] + 10 + 1)
        assert r["every_for_5_percent_flops"] >= 19 * r["probe_cost_steps_flops"]
        assert r["hessian/relative_bound"] >= 0 and len(r["hessian/top"]) == 2
    assert "top-2 relative bound < 1e-2 from" in result.stdout
    bad = run_command("tools/bench_probes.py", "--config", "configs/default.py", "--set",
                      "model.nope=1")
    assert bad.returncode == 1 and bad.stderr.startswith("bench_probes: error:")


def test_bench_curvature_reports_each_ratio_over_rounds():
    out = run_tool("tools/bench_curvature.py", "--config", "configs/default.py",
                   "--batch_size", "32", "--rounds", "3", "--m1", "2", "--m2", "3",
                   "--steps", "6", "--kinds", "hessian")
    assert len(out["gradient_rounds_s"]) == 3
    for kind in ("hessian",):
        for name, r in out[kind]["ratios"].items():  # (amortised: a difference of two runs,
            assert r["min"] <= r["median"] <= r["max"], (kind, name)  # noisy on a tiny model)
        assert out[kind]["ratios"]["single"]["min"] > 0
        assert out[kind]["amortised_ratio"] == out[kind]["ratios"]["amortised"]["median"]
    assert out["convergence"]["steps"] == 6


def test_pack_runs_keeps_finished_runs_small_files_only(tmp_path):
    import tarfile

    root = tmp_path / "study"
    for name, marker in [("a", "final.json"), ("b", "diverged.json"), ("c", None)]:
        run = root / "grid" / name
        (run / "checkpoints" / "10").mkdir(parents=True)
        (run / "checkpoints" / "10" / "big").write_text("x")
        for f in ("config.json", "metrics.jsonl", "point.json"):
            (run / f).write_text("{}")
        if marker:
            (run / marker).write_text("{}")
    (root / "grid" / "sweep_e1.json").write_text("{}")
    out = tmp_path / "runs.tar.xz"
    subprocess.run(["bash", os.path.join(ROOT, "tools", "pack_runs.sh"), str(root), str(out)],
                   check=True, capture_output=True)
    with tarfile.open(out) as tar:
        names = sorted(tar.getnames())
    assert names == ["grid/a/config.json", "grid/a/final.json", "grid/a/metrics.jsonl",
                     "grid/a/point.json", "grid/b/config.json", "grid/b/diverged.json",
                     "grid/b/metrics.jsonl", "grid/b/point.json", "grid/sweep_e1.json"]


def test_every_console_command_names_a_callable():
    import importlib

    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    tools = {name[:-3] for name in os.listdir(os.path.join(ROOT, "tools"))
             if name.endswith(".py") and name != "__init__.py"}
    assert tools <= {target.split(":")[0].split(".")[-1] for target in scripts.values()}
    for command, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command
