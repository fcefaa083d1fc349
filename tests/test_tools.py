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
