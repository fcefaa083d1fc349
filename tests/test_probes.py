"""The probe suite in training, the offline probe tool on a running job, and the plots."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import (
    ROOT,
    assert_plot,
    assert_probe_records_in_tensorboard,
    cli_args,
    read_tensorboard,
    start,
    start_probe_watch,
    tiny_config,
    wait_for_checkpoint,
    with_overrides,
    xla_flags,
)

from nme_train.curvature.probes import ProbeSettings
from nme_train.optim import learning_rate_schedule
from nme_train.train.loop import train_and_evaluate
from nme_train.train.probing import read_probes
from nme_train.validation import ConfigError, validate

pytestmark = pytest.mark.slow

PROBES = {"probes.every_steps": 10, "probes.lanczos_steps": 6, "probes.top_k": 2,
          "probes.bottom_k": 2, "probes.trace_probes": 3, "probes.density_runs": 1,
          "probes.density_steps": 6, "probes.batch_size": 64}


def test_training_writes_probes_on_8_devices(data_dir, tmp_path):
    """data=4 x fsdp=2 with sharded parameters; probes at steps 0 and 20 (the end)."""
    workdir = str(tmp_path / "run")
    config = tiny_config(data_dir, **{
        **PROBES, "probes.every_steps": 20,
        "num_train_steps": 20, "mesh.data": 4, "mesh.fsdp": 2, "sharding.fsdp_min_size": 256,
        "model.activation": "gelu",
        "probes.kinds": ("hessian", "gauss_newton", "nme", "nme_activation", "nme_rest",
                         "nme_normalization", "nme_between")})
    train_and_evaluate(config, workdir)
    records = read_probes(workdir)
    assert [r["step"] for r in records] == [0, 20]
    schedule = learning_rate_schedule(config.optimizer, 20, 1500 // 64)  # digits: 1,500
    for r in records:
        rate = float(schedule(r["step"]))
        # the NME by source: the parts add up probe by probe, shares along g^ and in trace
        assert r["nme_split/identity_residual"] < 1e-4
        assert abs(r["nme_split/activation_trace_share"] + r["nme_split/rest_trace_share"]
                   - 1) < 1e-4
        assert abs(r["nme_split/activation_trace_share"]  # the BatchNorm CNN's three parts
                   + r["nme_split/normalization_trace_share"]
                   + r["nme_split/between_trace_share"] - 1) < 1e-4
        assert r["nme_split/normalization_norm_share"] > 0
        assert 0 < r["nme_split/activation_norm_share"] and 0 < r["nme_split/rest_norm_share"]
        assert r["nme_split/gauss_newton_to_nme_norm"] > 0
        # lambda_max(H) against Nesterov's threshold at the step's learning rate
        if rate:
            assert r["stability/learning_rate"] == pytest.approx(rate, rel=1e-5)
            assert r["stability/ratio"] == pytest.approx(
                r["hessian/top_eigenvalues"][0] * (1 + 2 * 0.9) * rate / (2 + 2 * 0.9),
                rel=1e-6)
        assert set(r["dead_units/layers"]) == set(r["sparsity/layers"])
    for r in records:
        for kind in ("hessian", "gauss_newton", "nme"):
            assert len(r[f"{kind}/top_eigenvalues"]) == 2
            assert np.all(np.isfinite(r[f"{kind}/top_eigenvalues"]))
            assert r[f"{kind}/trace_se"] > 0
            assert len(r[f"{kind}/density"]["grid"]) == 200
            assert np.isfinite(r[f"{kind}/alignment"])
        # G is positive semi-definite
        g_top, g_bottom = (r[f"gauss_newton/{end}_eigenvalues"][0] for end in ("top", "bottom"))
        assert g_bottom > -1e-3 * g_top
        # tr H = tr G + tr NME, probe by probe
        assert r["trace/identity_residual"] < 1e-4
        # per-layer traces: one per parameter leaf, summing to the trace
        for kind in ("hessian", "gauss_newton", "nme"):
            layers = r[f"{kind}/trace_by_layer"]
            assert set(layers) == set(r[f"{kind}/trace_by_layer_se"])
            assert {"Conv_0/kernel", "Dense_0/kernel"} <= set(layers), sorted(layers)
            assert abs(sum(layers.values()) - r[f"{kind}/trace"]) \
                <= 1e-5 * max(1.0, abs(r[f"{kind}/trace"]))
        assert r["basis_memory"] == "device" and r["basis_mib"] > 0
        assert set(r["sparsity/layers"]) and r["sparsity/threshold"] == 1e-3
        assert r["matvecs"] == 7 * ProbeSettings.from_config(config.probes).matvecs_per_kind()
    assert all(0.0 < r["sparsity/mean"] <= 1.0 for r in records)
    runs = read_tensorboard(os.path.join(workdir, "tensorboard"))
    assert_probe_records_in_tensorboard(runs["."], records)


def test_probe_vectors_and_gradient_are_laid_out_as_the_parameters(data_dir):
    """On data=4 x fsdp=2, the probe's random vectors and its gradient take the parameters'
    shardings: one compiled operator product serves both, and no device holds a whole
    vector that the parameters shard (unconstrained, the vectors came out on one device
    and the gradient replicated, and each compiled the product again)."""
    from jax.sharding import PartitionSpec

    from nme_train.data import DATASETS
    from nme_train.sharding import global_batch
    from nme_train.train.probing import RunProbes
    from nme_train.train.program import build_program

    config = tiny_config(data_dir, **{"mesh.data": 4, "mesh.fsdp": 2,
                                      "sharding.fsdp_min_size": 256})
    spec = DATASETS["digits"]
    program = build_program(config, spec, jax.devices(), total_steps=10, steps_per_epoch=10)
    state = program.init()
    rng = np.random.default_rng(0)
    host = {"image": rng.integers(0, 256, (64, 8, 8, 1), np.uint8),
            "label": rng.integers(0, 10, 64).astype(np.int32)}
    suite = RunProbes(config, spec, program, None, host_batches=[host]).suite
    batch = global_batch(host, program.batch_sharding)
    batches = [{"inputs": {"images": batch["image"], "model_state": state.model_state},
                "targets": batch["label"]}]
    expected = jax.tree.leaves(program.state_sharding.params)
    assert any(s.spec != PartitionSpec() for s in expected)  # some leaves are sharded
    for tree in (suite.random_vector(jax.random.PRNGKey(0), state.params),
                 suite.gradient(state.params, batches)[1]):
        for x, sharding in zip(jax.tree.leaves(tree), expected, strict=True):
            assert x.sharding.is_equivalent_to(sharding, x.ndim), (x.sharding, sharding)


@pytest.mark.parametrize("activation,expected", [
    ("relu", "zero"), ("gelu_nme_ablated", "zero"), ("gelu", "dense"),
    ("relu_synthetic_nme", "sparse"), ("beta_gelu", "sparse")])
def test_activation_sparsity_probe(activation, expected):
    """E9: the fraction of |sigma''| > threshold per activation site, against closed forms."""
    from configs import default
    from nme_train.models import build_model, get_activation
    from nme_train.models.sparsity import activation_probe

    c = default.get_config()
    c.model.activation, c.model.beta = activation, 20.0
    model = build_model(c.model, 10)
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
    fn = get_activation(activation, beta=20.0)
    sites, _ = activation_probe(model, fn, 1e-3, train=True)(variables, [{"inputs": x}])
    assert len(sites) == len(c.model.features) + len(c.model.hidden)  # one per activation
    values = np.array(list(sites.values()))
    if expected == "zero":
        assert np.all(values == 0.0)
    elif expected == "dense":  # GELU'' = phi(x)(2 - x^2) is above 1e-3 for |x| < ~3.9
        assert np.all(values > 0.9)
    else:  # beta = 20 (the surrogate of relu_synthetic_nme too): non-zero within ~1/beta of 0
        assert np.all((values > 0.0) & (values < 0.5))


def test_dead_units_are_the_units_silent_on_every_probe_example():
    """A unit whose pre-activation is <= 0 on every example is dead: three of eight first-
    layer units made so by hand (zero weights, negative bias), none in the second layer."""
    from nme_train.base_config import base_config
    from nme_train.models import build_model, get_activation
    from nme_train.models.sparsity import activation_probe

    c = base_config()
    c.model.name, c.model.hidden, c.model.batch_norm = "mlp", (8, 6), False
    model = build_model(c.model, 10)
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
    params = jax.tree.map(np.array, variables["params"])
    params["Dense_0"]["kernel"][:, :3] = 0.0
    params["Dense_0"]["bias"][:3] = -1.0
    params["Dense_1"]["bias"][:] = 5.0  # every second-layer unit on
    _, dead = activation_probe(model, get_activation("relu"), 1e-3, train=False)(
        {"params": params}, [{"inputs": x[:16]}, {"inputs": x[16:]}])
    assert list(dead.values()) == [3 / 8, 0.0]


def test_probe_config_errors_name_the_field():
    from configs import default

    c = with_overrides(default.get_config(), **{
        "probes.kinds": ("hessian", "curvature"), "probes.trace_probes": 1,
        "probes.batch_norm": "frozen", "probes.num_batches": 0, "probes.batch_size": 12})
    with pytest.raises(ConfigError) as err:
        validate(c, 8)
    text = str(err.value)
    for field in ("config.probes.kinds", "config.probes.trace_probes=1",
                  "config.probes.batch_norm='frozen'", "config.probes.num_batches=0",
                  "config.probes.batch_size=12"):
        assert field in text, (field, text)


def tree_digest(directory):
    digest = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def test_offline_probe_follows_a_running_job(data_dir, tmp_path):
    """nme-probe --watch on a job while it trains: both finish, checkpoints untouched;
    a second trainer started on that workdir meanwhile is refused.

    The job would run for long; once the tool has probed two of its
    checkpoints while it trains, the job is preempted (SIGTERM: it saves and
    exits 75), and the tool probes that last checkpoint and stops when no new
    one comes.
    """
    workdir = str(tmp_path / "job")
    # at most 100 steps a second (each batch 0.01 s late): the job waits on its input
    # instead of taking a core from the tool
    job = start(cli_args(data_dir, workdir, steps=10**6, every=200)
                + ["--config.checkpoint.max_to_keep=2"], input_delay=0.01)
    wait_for_checkpoint(workdir, job)
    tool = start_probe_watch(workdir, idle_timeout=8)
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    deadline = time.time() + 300
    while len(read_probes(workdir, "probes_offline.jsonl")) < 2:
        if job.poll() is not None or tool.poll() is not None or time.time() > deadline:
            for proc in (job, tool):
                proc.kill()
            raise AssertionError("the tool did not probe two checkpoints while the job ran:\n"
                                 + job.communicate()[1][-2000:] + tool.communicate()[1][-3000:])
        time.sleep(0.2)
    probed_while_training = [r["step"] for r in read_probes(workdir, "probes_offline.jsonl")]
    # a second trainer on the running job's workdir stops in one line, naming the first
    second = subprocess.run([sys.executable, "-m", "nme_train.main",
                             *cli_args(data_dir, workdir, steps=10**6, every=400)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"error: {workdir} is being written by another trainer (pid {job.pid} on host")
    job.send_signal(signal.SIGTERM)
    job_out, job_err = job.communicate(timeout=120)
    assert job.returncode == 75, job_err[-3000:]
    last = int(job_out.split("preempted by SIGTERM at step ")[1].split(";")[0])
    after_job = tree_digest(os.path.join(workdir, "checkpoints"))
    tool_out, tool_err = tool.communicate(timeout=300)
    assert tool.returncode == 0, tool_err[-3000:]
    assert tree_digest(os.path.join(workdir, "checkpoints")) == after_job
    records = read_probes(workdir, "probes_offline.jsonl")
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and steps[:2] == probed_while_training[:2]
    assert steps[-1] == last  # the checkpoint written at the preemption
    assert all(r["source"] == "offline" and np.isfinite(r["hessian/top_eigenvalues"][0])
               for r in records)
    assert "no new checkpoint for 8 s; stopping" in tool_out
    assert not os.path.exists(os.path.join(workdir, "probes.jsonl"))  # the job had none
    # the same records in TensorBoard, as a run of their own beside the training curves
    runs = read_tensorboard(os.path.join(workdir, "tensorboard"))
    assert set(runs) == {".", "probes_offline"} and "train/loss" in runs["."]["scalars"]
    assert_probe_records_in_tensorboard(runs["probes_offline"], records)

    # a one-shot probe of a given step, then the plots
    out = subprocess.run([sys.executable, "-m", "nme_train.commands.plot_curvature", workdir],
                         cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("curvature_spectra.png", "curvature_traces.png", "curvature_layers.png",
                 "curvature_density.png"):
        path = os.path.join(workdir, name)
        assert_plot(path)


def test_offline_probe_reports_missing_step(data_dir, tmp_path):
    workdir = str(tmp_path / "short")
    config = tiny_config(data_dir, **{"num_train_steps": 8})
    train_and_evaluate(config, workdir)
    out = subprocess.run([sys.executable, "-m", "nme_train.commands.probe", f"--workdir={workdir}",
                          "--step=5", "--set", "probes.batch_size=16"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "XLA_FLAGS": xla_flags()})
    assert out.returncode != 0
    assert "probe: error: --step 5: no finished checkpoint at that step; the run has [8]" \
        in out.stderr.splitlines()[-1]


def test_offline_probe_in_float64_of_one_step(data_dir, tmp_path):
    workdir = str(tmp_path / "f64")
    train_and_evaluate(tiny_config(data_dir, **{"num_train_steps": 8}), workdir)
    out = subprocess.run([sys.executable, "-m", "nme_train.commands.probe", f"--workdir={workdir}",
                          "--float64",
                          "--set", "probes.batch_size=16", "--set", "probes.lanczos_steps=5",
                          "--set", "probes.trace_probes=2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "XLA_FLAGS": xla_flags()})
    assert out.returncode == 0, out.stderr[-3000:]
    (record,) = read_probes(workdir, "probes_offline.jsonl")
    assert record["step"] == 8 and record["dtype"] == "float64"
    # in float64 the shared-probe identity tr H = tr G + tr NME holds to round-off
    assert record["trace/identity_residual"] < 1e-12
    assert not os.path.exists(os.path.join(workdir, "probe_snapshots", "8"))


def test_per_layer_traces_reach_tensorboard_scalars():
    from nme_train.curvature.probes import scalars

    out = scalars({"step": 3, "nme/trace": -1.5, "nme/trace_by_layer": {
        "Conv_0/kernel": -2.0, "BatchNorm_0/scale": 0.5}, "hessian/top_eigenvalues": [4.0, 3.0]})
    assert out == {"probes/nme/trace": -1.5, "probes/nme/trace_by_layer/Conv_0/kernel": -2.0,
                   "probes/nme/trace_by_layer/BatchNorm_0/scale": 0.5,
                   "probes/hessian/top_eigenvalues/0": 4.0,
                   "probes/hessian/top_eigenvalues/1": 3.0}
