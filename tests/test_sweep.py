"""Sweeps (nme_train.commands.sweep): a grid run point by point, resumed, refused, on SLURM."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, assert_plot, run_command, xla_flags

from nme_train.commands import summarize, sweep
from nme_train.sweeps.plan import load_experiment, plot_settings
from nme_train.train.rundir import FINAL_FILE, MACHINES_FILE

pytestmark = pytest.mark.slow



def test_sweep_errors_are_one_line(tmp_path, capsys):
    from nme_train.commands import sweep

    broken = tmp_path / "broken.py"
    broken.write_text("def grid(:\n")
    for config, expected in [(str(tmp_path / "nope.py"), "no such file"),
                             (str(broken), "SyntaxError"),
                             (os.path.join(ROOT, "configs/default.py"), "defines no grid"),
                             (os.path.join(ROOT, "configs/paper/e1.py:nope"),
                              "unknown scale 'nope'")]:
        assert sweep.main(["--config", config, "--workdir", str(tmp_path / "w"),
                           "--launcher", "print"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sweep: error: ") and expected in err[0]


def test_local_sweep_runs_each_point_once_and_summarizes(tmp_path, data_dir):
    config = tiny_experiment(tmp_path, data_dir)
    workdir = tmp_path / "sweep"
    out = run_sweep("--config", config, "--workdir", str(workdir), "--jobs", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tiny at scale digits: 4 points, 0 finished, 4 to run" in out.stdout
    names = ["method=none,rho=0,seed=0", "method=none,rho=0,seed=1",
             "method=gp,rho=0.1,seed=0", "method=gp,rho=0.1,seed=1"]
    for name in names:
        final = json.loads((workdir / name / FINAL_FILE).read_text())
        assert final["step"] == 6 and 0.0 <= final["eval/accuracy"] <= 1.0
        point = json.loads((workdir / name / "point.json").read_text())
        assert point["config"] == f"{config}:digits/{name}"
        assert json.loads((workdir / name / "config.json").read_text())["seed"] == \
            int(name[-1])
        (machine,) = [json.loads(line) for line in
                      (workdir / name / MACHINES_FILE).read_text().splitlines()]
        assert machine["host"] == socket.gethostname() and machine["cores"] == os.cpu_count()
        assert machine["cpu"] and len(machine["cpu_flags_sha256"]) == 16
    penalty = json.loads((workdir / names[2] / "config.json").read_text())["regularizers"]
    assert penalty == [["gradient_penalty", {"rho": 0.1}]]
    # finished runs are skipped
    again = run_sweep("--config", config, "--workdir", str(workdir))
    assert again.returncode == 0 and "4 finished, 0 to run" in again.stdout
    # a run that lost its final.json (e.g. killed) is run again, and only that one
    os.remove(workdir / names[1] / FINAL_FILE)
    printed = run_sweep("--config", config, "--workdir", str(workdir), "--launcher", "print")
    assert "3 finished, 1 to run" in printed.stdout
    assert len((workdir / names[1] / MACHINES_FILE).read_text().splitlines()) == 1
    assert printed.stdout.count("nme_train.main") == 1 and names[1] in printed.stdout
    # summary of the real runs: 2 groups of 2 seeds, accuracy mean and std
    assert summarize.main([str(workdir), "--out", str(tmp_path / "summary")]) == 0
    table = (tmp_path / "summary" / "summary_tiny.md").read_text()
    assert "| method | rho | seeds | test accuracy (%)" in table
    assert "| gp | 0.1 | 2 |" in table and "1 run(s) of this grid have not finished" in table
    assert_plot(tmp_path / "summary" / "summary_tiny.png")


def test_sigterm_stops_a_local_sweep_at_a_checkpoint_and_the_next_sweep_resumes(
        tmp_path, data_dir):
    config = tiny_experiment(tmp_path, data_dir)
    text = open(config).read().replace("c.num_epochs, c.num_train_steps = -1, 6",
                                       "c.num_epochs, c.num_train_steps = -1, 4000")
    open(config, "w").write(text.replace('"gp": (0.1,)', '"gp": ()'))  # 2 plain points
    workdir = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "nme_train.commands.sweep", "--config", config,
                             "--workdir", str(workdir)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ,
                                                                      "XLA_FLAGS": xla_flags()})
    first = workdir / "method=none,rho=0,seed=0"
    deadline = time.time() + 120
    while time.time() < deadline and "step 3/" not in _read(first / "train.log") \
            and "step 6/" not in _read(first / "train.log"):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out  # stopped, its runs saved: run it again to resume
    assert "stopping the runs" in out and "stopped at a checkpoint" in out
    assert "started method=none,rho=0,seed=1" not in out  # nothing new starts
    assert not (first / FINAL_FILE).exists() and os.listdir(first / "checkpoints")
    printed = run_sweep("--config", config, "--workdir", str(workdir), "--launcher", "print")
    assert "0 finished, 2 to run" in printed.stdout


def test_sweep_refuses_a_run_made_with_another_config(tmp_path, data_dir):
    config = tiny_experiment(tmp_path, data_dir)
    workdir = tmp_path / "sweep"
    run_dir = workdir / "method=none,rho=0,seed=0"
    run_dir.mkdir(parents=True)
    m, scale, _ = load_experiment(config)
    other = json.loads(m.get_config("digits/method=none,rho=0,seed=0").to_json_best_effort())
    other["batch_size"] = 32
    (run_dir / "config.json").write_text(json.dumps(other))
    out = run_sweep("--config", config, "--workdir", str(workdir), "--launcher", "print")
    assert out.returncode == 2
    assert "were started with another config" in out.stderr and "new --workdir" in out.stderr
    e7 = run_sweep("--config", "configs/paper/e7.py", "--workdir", str(workdir))
    assert e7.returncode == 2 and "tools/toy_landscape.py" in e7.stderr


def test_sweep_only_runs_the_points_with_a_tag(tmp_path, capsys):
    args = ["--config", "configs/paper/e2.py:study", "--workdir", str(tmp_path),
            "--launcher", "print"]
    assert sweep.main(args + ["--only", "activation=gelu_nme_ablated"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "54 points, 0 finished, 18 to run (--only)" in lines[0]
    assert len(lines) == 19 and all("activation=gelu_nme_ablated," in x for x in lines[1:])
    assert sweep.main(args + ["--only", "method=none", "--only", "rho=1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 18 + 18


# sbatch stand-in: records the environment a job would start with, as sbatch(1) builds it
# from --export: "ALL" (also the default) passes the submitting environment; further
# entries are NAME or NAME=value, separated by commas (so a value cannot hold one: seen
# with SLURM 22.05, a point name after CONFIG= was cut at its first comma). The real sbatch
# is used by tests/test_slurm.py (--slurm).
FAKE_SBATCH = """#!{python}
import json, os, sys
args, export = sys.argv[1:], "ALL"
for arg in args:
    if arg.startswith("--export="):
        export = arg.split("=", 1)[1]
items = export.split(",")
env = dict(os.environ) if items[0] == "ALL" else {{}}
for item in items[1:] if items[0] in ("ALL", "NONE") else items:
    name, eq, value = item.partition("=")
    env[name] = value if eq else os.environ.get(name, "")
with open({log!r}, "a") as f:
    f.write(json.dumps({{"args": args, "CONFIG": env.get("CONFIG"),
                        "WORKDIR": env.get("WORKDIR")}}) + "\\n")
print("Submitted batch job", os.getpid())
"""


def test_slurm_launcher_submits_one_job_per_pending_point(tmp_path):
    fake = tmp_path / "sbatch"
    log = tmp_path / "sbatch.log"
    fake.write_text(FAKE_SBATCH.format(python=sys.executable, log=str(log)))
    fake.chmod(0o755)
    workdir = tmp_path / "runs"
    finished = workdir / "activation=gelu,method=none,rho=0,seed=0"
    finished.mkdir(parents=True)
    (finished / FINAL_FILE).write_text(json.dumps({"eval/accuracy": 0.5}))
    out = run_sweep("--config", "configs/paper/e10.py:imagenet", "--workdir", str(workdir),
                    "--launcher", "slurm", "--sbatch_args=--nodes=4 --time=24:00:00",
                    env={"SBATCH": str(fake)})
    assert out.returncode == 0, out.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 2 * 13 - 1  # (none + 6 GP + 6 GP without NME) x 2 seeds, one done
    first = calls[0]["args"]
    assert first[:2] == ["--nodes=4", "--time=24:00:00"]
    assert first[-1].endswith("launch/slurm.sbatch")
    point = "activation=gelu,method=gp,rho=0.01,seed=0"  # seed 0 first: none,seed=0 is done
    seeds_in_order = [int(c["CONFIG"].split("seed=")[1]) for c in calls]
    assert seeds_in_order == sorted(seeds_in_order)
    # each job sees its whole point, commas and all
    assert calls[0]["CONFIG"] == f"configs/paper/e10.py:imagenet/{point}"
    assert calls[0]["WORKDIR"] == f"{workdir}/{point}"
    assert len({c["CONFIG"] for c in calls}) == len(calls)
    assert out.stdout.count("Submitted batch job") == 25


def tiny_experiment(tmp_path, data_dir, methods='{"none": (), "gp": (0.1,)}') -> str:
    """An experiment file over the digits MLP: `methods` (by default 2: plain training and
    the penalty at rho 0.1) x 2 seeds, 6 steps per run."""
    path = tmp_path / "tiny.py"
    path.write_text(textwrap.dedent(f"""
        from configs import default
        from nme_train.sweeps.grids import experiment_config, methods, product, seeds

        SCALES = ("digits",)
        PLOT = {{"kind": "final", "x": "rho", "lines": ("method",)}}


        def base(scale):
            c = default.get_config("mlp")
            c.data.data_dir = {data_dir!r}
            c.model.hidden = (16,)
            c.num_epochs, c.num_train_steps = -1, 6
            c.batch_size = c.eval_batch_size = 64
            c.log_every_steps, c.eval_every_steps = 3, 0
            return c


        def grid(scale):
            return product(methods({methods}), seeds((0, 1)))


        def get_config(arg="digits"):
            return experiment_config(base, grid, SCALES, arg)
    """))
    return str(path)


def run_sweep(*args, env=None):
    return run_command("-m", "nme_train.commands.sweep", *args, devices=None, timeout=600, env=env)


def _read(path) -> str:
    try:
        return open(path).read()
    except FileNotFoundError:
        return ""


def test_a_scale_replaces_plot_settings_of_its_own():
    """PLOT["scales"][scale] replaces those keys for that scale's manifest only."""
    import types

    module = types.SimpleNamespace(PLOT={"kind": "final", "series": ["a"], "x": "rho",
                                         "scales": {"series": {"series": ["a", "b"]}}})
    assert plot_settings(module, "series") == {"kind": "final", "series": ["a", "b"],
                                               "x": "rho"}
    assert plot_settings(module, "study") == {"kind": "final", "series": ["a"], "x": "rho"}
    assert "scales" in module.PLOT  # the module's own dict is left as it was
    assert plot_settings(types.SimpleNamespace(), "study") == {"kind": "final"}
