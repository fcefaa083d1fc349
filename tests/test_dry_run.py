"""--dry_run: compile the training and probe steps from shapes, for a topology, without data."""

import os
import subprocess
import sys

from conftest import with_overrides

from configs import default
from nme_train.train.dry_run import dry_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_reports_flops_and_memory_per_device():
    overrides = {"mesh.data": 4, "mesh.fsdp": 2, "sharding.fsdp_min_size": 256,
                 "data.data_dir": "/nonexistent/never-read"}
    plain = dry_run(with_overrides(default.get_config(), **overrides))
    gp = dry_run(with_overrides(default.get_config(), **overrides,
                                regularizers=(("gradient_penalty", {"rho": 0.1}),)))
    assert plain["parameters"] == gp["parameters"] > 0
    assert plain["mesh"] == {"data": 4, "fsdp": 2}
    for report in (plain, gp):
        for step in ("train_step", "probe_step"):
            assert report[step]["flops"] > 0
            assert report[step]["memory_mib_per_device"]["peak"] > 0
    # the penalty's step: one gradient and one Hessian-vector product, about 3x the FLOPs
    assert 2.5 < gp["train_step"]["flops"] / plain["train_step"]["flops"] < 3.5
    basis = plain["probe_step"]
    assert basis["lanczos_basis_mib_per_device"] == basis["lanczos_basis_mib_total"] / 2


def test_dry_run_of_the_imagenet_config_from_the_command_line(tmp_path):
    """ResNet-50 with SAM at a reduced image size on 8 fake devices, no dataset present."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "nme_train.main", "--config=configs/imagenet_resnet50.py",
         f"--workdir={tmp_path / 'dry'}", "--dry_run", "--config.data.image_size=32",
         "--config.batch_size=16", "--config.eval_batch_size=16", "--config.mesh.fsdp=2",
         f"--config.data.data_dir={tmp_path / 'no_data'}",
         "--config.regularizers=(('sam', {'rho': 0.05}),)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dry run: 25,557,032 parameters; mesh {'data': 4, 'fsdp': 2} over 8 device(s)" \
        in out.stdout
    assert "train_step: compiled in" in out.stdout and "probe_step: compiled in" in out.stdout
    assert "Lanczos basis:" in out.stdout
    assert not os.path.exists(tmp_path / "no_data") and not os.path.exists(tmp_path / "dry")
