"""The paper's experiments: configs E1-E10, sweeps, summaries, the toy landscape (E7)."""

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import ROOT, assert_plot, run_command

from configs.paper import common
from nme_train.experiments import apply_overrides, product, seeds
from nme_train.train.dry_run import dry_run
from nme_train.train.rundir import DIVERGED_FILE, FINAL_FILE
from nme_train.validation import validate
from tools import summarize, sweep

pytestmark = pytest.mark.slow


SWEEPS = ("e1", "e2", "e3", "e4", "e5", "e6", "e8", "e9", "e10")


def module(name):
    return importlib.import_module(f"configs.paper.{name}")


@pytest.mark.parametrize("name", SWEEPS)
def test_every_point_of_every_scale_validates(name):
    m = module(name)
    assert set(m.SCALES) == {"imagenet", "cifar10", "fashion_mnist", "study"}
    for scale in m.SCALES:
        points = sweep.expand(m, scale)
        assert len(points) >= 4 and len({p.name for p in points}) == len(points)
        seeds_used = {dict(p.tags)["seed"] for p in points}
        assert seeds_used == ({0, 1, 2} if scale == "study" else {0, 1})  # the paper used 2
        for point in points:
            config = m.get_config(f"{scale}/{point.name}")
            validate(config, 8)  # what the trainer checks first, for 8 devices
            assert config == apply_overrides(m.base(scale), point.overrides)


def test_grid_sizes_and_the_hyperparameter_conventions():
    e1 = sweep.expand(module("e1"), "cifar10")  # 2 activations x (none + 6 SAM + 6 GP) x 2
    assert len(e1) == 2 * 13 * 2
    study = sweep.expand(module("e1"), "study")  # BatchNorm on/off x 2 x (1 + 4 + 4) x 3
    assert len(study) == 2 * 2 * 9 * 3
    no_bn = module("e1").get_config("study/bn=false,activation=relu,method=gp,rho=1,seed=2")
    assert (no_bn.model.batch_norm, no_bn.optimizer.learning_rate) == (False, 0.1)
    assert no_bn.data.train_split == "train[:4000]" and no_bn.log_every_steps == 93
    e4 = {p.name: dict(p.overrides) for p in sweep.expand(module("e4"), "study")}
    head = "bn=false,activation=gelu"
    noise = e4[f"{head},method=weight_noise,sigma2=0.01,seed=0"]["regularizers"]
    assert noise == (("weight_noise", {"sigma": pytest.approx(0.1)}),)
    trace = e4[f"{head},method=hessian_trace,sigma2=0.01,seed=1"]["regularizers"]
    assert trace == (("hessian_trace_penalty", {"coef": 0.005}),)  # sigma^2 / 2 (Bishop)
    for method, estimator in (("gn_trace", "hutchinson"), ("gn_trace_sampled", "sampled_labels")):
        entry = e4[f"{head},method={method},sigma2=0.001,seed=2"]["regularizers"]
        assert entry == (("gauss_newton_trace_penalty", {"coef": 0.0005, "estimator": estimator}),)
    e5 = {p.name: dict(p.overrides) for p in sweep.expand(module("e5"), "study")}
    five = e5[f"{head},method=hessian_trace,sigma2=0.001,probes=5,seed=0"]["regularizers"]
    assert five[0][1]["num_probes"] == 5
    e3 = module("e3").get_config("study/bn=false,activation=relu_synthetic_nme,beta=16,"
                                 "method=gp,rho=1,seed=0")
    assert (e3.model.activation, e3.model.beta, e3.model.batch_norm) == \
        ("relu_synthetic_nme", 16.0, False)
    # points shared between experiments have the same names and configs
    for a, b in (("e1", "e2"), ("e1", "e3"), ("e1", "e10"), ("e4", "e5"), ("e4", "e6"),
                 ("e8", "e9")):
        ma, mb = module(a), module(b)
        shared = {p.name for p in sweep.expand(ma, "study")} \
            & {p.name for p in sweep.expand(mb, "study")}
        assert shared, (a, b)
        for name in shared:
            assert ma.get_config(f"study/{name}") == mb.get_config(f"study/{name}")
    e9 = module("e9").get_config("cifar10/beta=64,method=none,rho=0,seed=1")
    assert (e9.model.activation, e9.model.beta, e9.regularizers) == ("beta_gelu", 64.0, ())


def test_pilot_regimes_validate_and_pair_their_seeds():
    m = module("regime")
    points = sweep.expand(m, "pilot")
    # (none + 5 SAM radii) x (2 seeds of the rejected a4k + 5 of n4k and f4k)
    assert len(points) == 6 * (2 + 5 + 5) and len({p.name for p in points}) == len(points)
    steps = {}
    for point in points:
        config = m.get_config(f"pilot/{point.name}")
        validate(config, 8)
        assert config.model.batch_norm and config.data.train_split == "train[:4000]"
        assert config.optimizer.warmup_epochs == 5
        tags = point.tag_dict
        steps[tags["regime"]] = common.epoch_steps(config) * config.num_epochs
        # a seed's runs differ only in the regularizer: same init, data order, augmentation
        plain = m.get_config(f"pilot/regime={tags['regime']},method=none,rho=0,"
                             f"seed={tags['seed']}")
        config.regularizers = ()
        assert config == plain
    assert steps == {"a4k": 930, "n4k": 930, "f4k": 930}


def test_bad_config_strings_name_the_fix():
    with pytest.raises(ValueError, match="unknown scale 'cifar100'"):
        module("e1").get_config("cifar100")
    with pytest.raises(ValueError, match="no point 'method=sam' in the study grid"):
        module("e1").get_config("study/method=sam")
    with pytest.raises(ValueError, match="combined twice"):
        product(seeds((0,)), seeds((1,)))
    with pytest.raises(KeyError, match="no field 'model.nonexistent'"):
        apply_overrides(module("e1").base("study"), [("model.nonexistent", 1)])


# One dry run per experiment file (8 fake devices, reduced image size and batch): its
# characteristic point at one of the full scales, so that every model and every
# regularizer of the grids is compiled. (ImageNet ResNet-50 with SAM: the CLI test below.)
DRY_RUNS = [
    ("e2", "cifar10", "activation=gelu_nme_ablated,method=gp,rho=0.5,seed=0"),
    ("e3", "fashion_mnist", "activation=relu_synthetic_nme,beta=4,method=gp,rho=0.1,seed=0"),
    ("e4", "fashion_mnist", "activation=gelu,method=hessian_trace,sigma2=0.01,seed=0"),
    ("e5", "fashion_mnist", "activation=gelu,method=gn_trace_sampled,sigma2=0.001,probes=5,seed=1"),
    ("e6", "study", "bn=false,activation=gelu,method=weight_noise,sigma2=0.001,seed=0"),
    ("e8", "study", "bn=false,beta=64,method=gn_trace,sigma2=0.01,seed=0"),
    ("e9", "study", "bn=true,beta=8,method=none,rho=0,seed=1"),
    ("e10", "fashion_mnist", "activation=gelu,method=gp_no_nme,rho=0.5,seed=0"),
]


@pytest.mark.parametrize("name,scale,point", DRY_RUNS)
def test_dry_run_of_each_experiment(name, scale, point):
    config = module(name).get_config(f"{scale}/{point}")
    with config.unlocked():
        config.data.image_size = 16 if scale == "cifar10" else 0
        config.batch_size = config.eval_batch_size = config.probes.batch_size = 16
        config.data.data_dir = "/nonexistent/never-read"
    report = dry_run(config)
    assert report["mesh"] == {"data": 8, "fsdp": 1}
    assert report["train_step"]["flops"] > 0
    # a probe of no curvature kind (E8/E9's sparsity probe) costs no curvature FLOPs
    assert (report["probe_step"]["flops"] > 0) == bool(config.probes.kinds)
    assert report["train_step"]["memory_mib_per_device"]["peak"] > 0
    if scale == "cifar10":
        assert report["parameters"] == 36_479_194  # WideResNet-28-10


def test_dry_run_of_e1_on_imagenet_from_the_command_line(tmp_path):
    """ResNet-50 with SAM, from its point's config string, at 32 px on 8 fake devices."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "nme_train.main",
         "--config=configs/paper/e1.py:imagenet/activation=gelu,method=sam,rho=0.05,seed=1",
         f"--workdir={tmp_path / 'dry'}", "--dry_run", "--config.data.image_size=32",
         "--config.batch_size=16", "--config.eval_batch_size=16",
         "--config.probes.batch_size=16", "--config.mesh.fsdp=2",
         f"--config.data.data_dir={tmp_path / 'no_data'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dry run: 25,557,032 parameters; mesh {'data': 4, 'fsdp': 2} over 8 device(s)" \
        in out.stdout
    assert "train_step: compiled in" in out.stdout and "probe_step: compiled in" in out.stdout
    assert "probe memory per device: residuals" in out.stdout and "Lanczos basis" in out.stdout
    assert "probe cost:" in out.stdout and "at most 5% from every" in out.stdout
    assert not os.path.exists(tmp_path / "no_data") and not os.path.exists(tmp_path / "dry")


# -- sweeps -------------------------------------------------------------------------------

def tiny_experiment(tmp_path, data_dir) -> str:
    """An experiment file over the digits MLP: 2 methods x 2 seeds, 6 steps per run."""
    path = tmp_path / "tiny.py"
    path.write_text(textwrap.dedent(f"""
        from configs import default
        from nme_train.experiments import experiment_config, methods, product, seeds

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
            return product(methods({{"none": (), "gp": (0.1,)}}), seeds((0, 1)))


        def get_config(arg="digits"):
            return experiment_config(base, grid, SCALES, arg)
    """))
    return str(path)


def run_sweep(*args, env=None):
    return run_command("tools/sweep.py", *args, devices=None, timeout=600, env=env)


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
    penalty = json.loads((workdir / names[2] / "config.json").read_text())["regularizers"]
    assert penalty == [["gradient_penalty", {"rho": 0.1}]]
    # finished runs are skipped
    again = run_sweep("--config", config, "--workdir", str(workdir))
    assert again.returncode == 0 and "4 finished, 0 to run" in again.stdout
    # a run that lost its final.json (e.g. killed) is run again, and only that one
    os.remove(workdir / names[1] / FINAL_FILE)
    printed = run_sweep("--config", config, "--workdir", str(workdir), "--launcher", "print")
    assert "3 finished, 1 to run" in printed.stdout
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
    proc = subprocess.Popen([sys.executable, "tools/sweep.py", "--config", config,
                             "--workdir", str(workdir)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ,
                                                                      "XLA_FLAGS": ""})
    first = workdir / "method=none,rho=0,seed=0"
    deadline = time.time() + 120
    while time.time() < deadline and "step 3/" not in _read(first / "train.log") \
            and "step 6/" not in _read(first / "train.log"):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "stopping the runs" in out and "stopped at a checkpoint" in out
    assert "started method=none,rho=0,seed=1" not in out  # nothing new starts
    assert not (first / FINAL_FILE).exists() and os.listdir(first / "checkpoints")
    printed = run_sweep("--config", config, "--workdir", str(workdir), "--launcher", "print")
    assert "0 finished, 2 to run" in printed.stdout


def _read(path) -> str:
    try:
        return open(path).read()
    except FileNotFoundError:
        return ""


def test_sweep_refuses_a_run_made_with_another_config(tmp_path, data_dir):
    config = tiny_experiment(tmp_path, data_dir)
    workdir = tmp_path / "sweep"
    run_dir = workdir / "method=none,rho=0,seed=0"
    run_dir.mkdir(parents=True)
    m, scale, _ = sweep.load_experiment(config)
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


def test_slurm_launcher_submits_one_job_per_pending_point(tmp_path):
    fake = tmp_path / "sbatch"
    log = tmp_path / "sbatch.log"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\necho Submitted batch job $$\n")
    fake.chmod(0o755)
    workdir = tmp_path / "runs"
    finished = workdir / "activation=gelu,method=none,rho=0,seed=0"
    finished.mkdir(parents=True)
    (finished / FINAL_FILE).write_text(json.dumps({"eval/accuracy": 0.5}))
    out = run_sweep("--config", "configs/paper/e10.py:imagenet", "--workdir", str(workdir),
                    "--launcher", "slurm", "--sbatch_args=--nodes=4 --time=24:00:00",
                    env={"SBATCH": str(fake)})
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2 * 13 - 1  # (none + 6 GP + 6 GP without NME) x 2 seeds, one done
    first = calls[0].split()
    assert first[:2] == ["--nodes=4", "--time=24:00:00"]
    assert first[-1].endswith("launch/slurm.sbatch")
    point = "activation=gelu,method=gp,rho=0.01,seed=0"  # seed 0 first: none,seed=0 is done
    seeds_in_order = [int(c.split("seed=")[1].split(",")[0].split()[0]) for c in calls]
    assert seeds_in_order == sorted(seeds_in_order)
    assert f"--export=ALL,CONFIG=configs/paper/e10.py:imagenet/{point}," \
        f"WORKDIR={workdir}/{point}" in calls[0]
    assert out.stdout.count("Submitted batch job") == 25


# -- summaries of fake run directories ------------------------------------------------------

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
    write_manifest(w, "e1", {"kind": "final", "x": "rho", "lines": ("method", "activation")},
                   points)
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
            points.append(fake_run(w, f"{act}-{method}-{rho}-{seed}", tags, acc))
    for act in ("relu", "gelu"):  # each rho=1 curve has a third seed that diverged
        tags = {"bn": False, "activation": act, "method": "gp", "rho": 1.0, "seed": 2}
        run = w / f"{act}-diverged"
        run.mkdir()
        (run / DIVERGED_FILE).write_text(json.dumps({"step": 17, "loss": "nan"}))
        points.append({"name": run.name, "tags": tags})
    write_manifest(w, "e1", {"kind": "final", "x": "rho", "lines": ("method", "activation"),
                             "panels": "bn", "symlog_x": 0.1, "zoom": 6,
                             "contrasts": [["activation", "gelu", "relu"]]}, points)
    assert summarize.main([str(w)]) == 0
    table = (w / "summary_e1.md").read_text()
    # relu gp 0.3: 86 - 87 = -1 point; SE = sqrt(1^2/3 + 1^2/3) = 0.816 points
    assert "| false | relu | gp | 0.3 | 3 | 0 | 86.00 ± 1.00 |" in table
    assert "| -1.00 ± 0.82 | 1.2 |" in table
    assert "| false | relu | gp | 1 | 2 | 1 | 55.00 ± 7.07 |" in table  # 1 diverged
    # relu: 0.3 is exactly 1 point below; at 1 it falls. gelu: 1 fails by its diverged seed
    assert "| false | relu | gp | 87.00 | 0.3 | 1 (-32.00, diverged 1) |" in table
    assert "| false | gelu | gp | 88.00 | 0.3 | 1 (-1.50, diverged 1) |" in table
    # gelu - relu at gp 0.3: +2 points, SE 0.816
    assert "| false | gp | 0.3 | +2.00 ± 0.82 | 2.4 |" in table
    assert_plot(w / "summary_e1.png")


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


# -- E7: the toy landscape -------------------------------------------------------------------

@pytest.mark.usefixtures("float64")
def test_toy_landscape_nme_against_the_dense_hessian():
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from tools import toy_landscape

    config = module("e7").get_config()
    params = toy_landscape.init_params(config)
    grid = np.linspace(-config.extent, config.extent, 5)
    x, y = jnp.asarray(config.x), config.y
    for spec in ("relu", "beta_gelu:4"):
        _, act, beta = toy_landscape.parse_activation(spec)
        loss, nme, pre0, _ = toy_landscape.landscape(config, act, params, grid)
        a, b = grid[3], grid[1]  # the point [row 1, column 3] of the slice

        def f(first, act=act):
            return jnp.dot(params["w2"], act(x @ first["w1"] + first["b1"])) + params["b2"]

        first = {"w1": params["w1"].at[0, 0].set(a).at[0, 1].set(b), "b1": params["b1"]}
        # NME of the first layer = 2 (f - y) d^2 f / d(first)^2; f is w2 . sigma(..), so
        # its first-layer Hessian is the sigma'' terms only
        flat, unravel = ravel_pytree(first)
        hess = jax.hessian(lambda v, unravel=unravel: f(unravel(v)))(flat)
        reference = 2 * (f(first) - y) * hess
        assert math.isclose(float(nme[1, 3]), float(jnp.sqrt(jnp.sum(reference ** 2))),
                            rel_tol=1e-9, abs_tol=1e-12), spec
        assert math.isclose(float(loss[1, 3]), float((f(first) - y) ** 2), rel_tol=1e-12)
        if not math.isfinite(beta):
            assert float(np.max(nme)) == 0.0  # ReLU: no activation NME off the boundaries


def test_toy_landscape_tool_reports_nme_within_band_of_the_boundaries(tmp_path):
    out = subprocess.run([sys.executable, "tools/toy_landscape.py", "--out", str(tmp_path),
                          "--resolution", "81"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "toy_landscape.json").read_text())
    rows = {r["activation"]: r for r in report["rows"]}
    assert rows["relu"]["nme_max"] == 0.0
    assert rows["beta_gelu:16"]["share_within_band"] > 0.9
    assert rows["beta_gelu:16"]["nme_max"] > rows["beta_gelu:1"]["nme_max"]
    assert_plot(tmp_path / "toy_landscape.png")
