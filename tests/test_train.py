"""End-to-end runs of train_and_evaluate on tiny configs."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import read_tensorboard, tiny_config

from nme_train.train.loop import train_and_evaluate
from nme_train.train.metrics import read_metrics
from nme_train.train.rundir import read_diverged

pytestmark = pytest.mark.slow


def test_end_to_end_writes_metrics_and_learns(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    final = train_and_evaluate(tiny_config(data_dir), workdir)
    records = read_metrics(workdir)
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["step"] for r in train] == [8, 16, 24]
    assert [r["step"] for r in evals] == [16, 24]
    for key in ("train/loss", "train/accuracy", "train/steps_per_sec", "train/examples_per_sec",
                "train/learning_rate", "train/grad_norm"):
        assert all(np.isfinite(r[key]) for r in train), key
    assert all(r["train/tflops_per_sec_per_device"] > 0 for r in train)  # XLA's step FLOPs
    assert train[-1]["train/loss"] < train[0]["train/loss"]
    assert final["eval/accuracy"] == evals[-1]["eval/accuracy"] > 0.5  # chance is 0.1
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["num_train_steps"] == 24
    # TensorBoard: the scalars (throughput too), the config as text and as hparams
    run = read_tensorboard(os.path.join(workdir, "tensorboard"))["."]
    assert [step for step, _ in run["scalars"]["train/loss"]] == [8, 16, 24]
    assert [step for step, _ in run["scalars"]["eval/accuracy"]] == [16, 24]
    for key in ("train/examples_per_sec", "train/tflops_per_sec_per_device"):
        assert [step for step, _ in run["scalars"][key]] == [8, 16, 24]
        assert all(v > 0 for _, v in run["scalars"][key])
    assert "train/mfu" not in run["scalars"]  # no known peak for a CPU
    (text_tag,) = run["plugins"]["text"]
    assert '"num_train_steps": 24' in run["tensors"][text_tag][0][1].string_val[0].decode()
    hparams = b"".join(run["plugins"]["hparams"].values())
    assert b"optimizer.learning_rate" in hparams and b"eval/accuracy" in hparams


def test_one_device_equals_eight_devices_with_fsdp(data_dir, tmp_path):
    """Same config, 1 device vs data=4 x fsdp=2 on 8 devices: same losses and accuracy."""
    assert jax.device_count() == 8
    overrides = {"log_every_steps": 1, "eval_every_steps": 0, "num_train_steps": 12,
                 "sharding.fsdp_min_size": 256}
    one = train_and_evaluate(tiny_config(data_dir, **overrides, **{"mesh.data": 1}),
                             str(tmp_path / "one"), devices=jax.devices()[:1])
    eight = train_and_evaluate(
        tiny_config(data_dir, **overrides, **{"mesh.data": 4, "mesh.fsdp": 2}),
        str(tmp_path / "eight"))
    loss_one = [r["train/loss"] for r in read_metrics(str(tmp_path / "one")) if "train/loss" in r]
    loss_eight = [r["train/loss"] for r in read_metrics(str(tmp_path / "eight"))
                  if "train/loss" in r]
    assert len(loss_one) == len(loss_eight) == 12
    np.testing.assert_allclose(loss_eight, loss_one, rtol=2e-5)
    assert abs(one["eval/loss"] - eight["eval/loss"]) < 1e-4
    assert one["eval/accuracy"] == eight["eval/accuracy"]


def test_non_finite_loss_stops_with_the_step(data_dir, tmp_path):
    workdir = str(tmp_path / "nan")
    config = tiny_config(data_dir, **{"optimizer.learning_rate": 1e30, "log_every_steps": 1,
                                      "optimizer.warmup_epochs": 0.0})
    with pytest.raises(FloatingPointError, match=r"diverged at step \d+") as info:
        train_and_evaluate(config, workdir)
    bad_step = info.value.step
    logged = [r["step"] for r in read_metrics(workdir)]
    assert all(step < bad_step for step in logged)  # what was written before stays
    assert read_diverged(workdir)["step"] == bad_step  # a sweep counts the run as diverged


def registered_regularizers():
    """(name, example kwargs) of every registered regularizer."""
    from nme_train.regularizers import REGULARIZERS

    return [(name, entry.example) for name, entry in REGULARIZERS.items()]


@pytest.mark.parametrize("regularizers", [((name, kwargs),) for name, kwargs in
                                          registered_regularizers()] + [
    (("sam", {"rho": 0.05, "m": 16, "adaptive": True}),),
    (("weight_noise", {"sigma": 0.01}), ("gradient_penalty", {"rho": 0.05})),
    (("gradient_penalty", {"rho": 0.05, "update": "G+NME_act"}),)])
def test_training_with_regularizers_logs_their_diagnostics(data_dir, tmp_path, regularizers):
    """Every registered regularizer at its example setting (and a few combinations) trains
    through the trainer's step and logs its diagnostics as train/<name>/..."""
    config = tiny_config(data_dir, regularizers=regularizers, num_train_steps=8,
                         log_every_steps=4, eval_every_steps=0, **{"mesh.data": 1})
    config.model.activation = "gelu"
    result = train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    line = [r for r in read_metrics(str(tmp_path / "run")) if "train/loss" in r][-1]
    for key in ("train/objective", "train/loss", "train/accuracy"):
        assert np.isfinite(line[key]), key
    for name, _ in regularizers:
        own = [k for k in line if k.startswith(f"train/{name}/")]
        assert own and all(np.isfinite(line[k]) for k in own), (name, sorted(line))
    assert np.isfinite(result["eval/loss"])


def test_m_sharpness_with_one_group_per_device_on_8_devices(data_dir, tmp_path):
    """m = per-device batch (the reference SAM code's default) on a data=8 mesh."""
    config = tiny_config(data_dir, regularizers=(("sam", {"rho": 0.05, "m": 8}),),
                         num_train_steps=6, log_every_steps=3, eval_every_steps=0,
                         **{"mesh.data": 8})
    result = train_and_evaluate(config, str(tmp_path / "msam"))
    lines = [r for r in read_metrics(str(tmp_path / "msam")) if "train/loss" in r]
    assert [r["step"] for r in lines] == [3, 6]
    assert all(np.isfinite(r["train/sam/grad_norm"]) for r in lines)
    assert np.isfinite(result["eval/loss"])


def test_throughput_and_mfu_from_the_step_flops(monkeypatch):
    """10 steps of 2 TFLOP (all devices; 1.2 TFLOP of model FLOPs) in 2 s on 2 H200s:
    5 TFLOP/s per device, HFU 5e12 / 989e12, MFU 3e12 / 989e12; no MFU on a CPU."""
    from types import SimpleNamespace

    from nme_train.train import metrics

    clock = [0.0, 2.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: clock.pop(0) if clock else 2.0)
    progress = metrics.Progress(total_steps=100, batch_size=64, enabled=False)
    progress.set_flops(2e12, [SimpleNamespace(device_kind="NVIDIA H200")] * 2, lambda: 1.2e12)
    progress.start(0)
    rates = progress.rates(10)
    assert rates["train/steps_per_sec"] == 5.0 and rates["train/examples_per_sec"] == 320.0
    assert rates["train/tflops_per_sec_per_device"] == 5.0
    assert abs(rates["train/hfu"] - 5e12 / 989e12) < 1e-12
    assert abs(rates["train/mfu"] - 3e12 / 989e12) < 1e-12
    asked = []
    cpu = metrics.Progress(total_steps=100, batch_size=64, enabled=False)
    cpu.set_flops(2e12, [SimpleNamespace(device_kind="cpu")], lambda: asked.append(1) or 1.0)
    assert not asked  # the forward pass is not traced where no MFU is reported
    assert metrics.peak_flops("TPU v5 lite") == 197e12 and metrics.peak_flops("cpu") is None
