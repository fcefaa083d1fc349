"""Components from outside the package: docs/extending.md's worked example, as written.

Its two blocks (my_components.py: a model with a setting of its own, a regularizer, an
operator kind and a probe figure; my_config.py, naming the module in config.modules) are
written into a temporary directory outside the package; the trainer trains with all four
(probing during training), nme-probe probes the run's checkpoints afterwards (importing
the module from config.json alone), and the dry run compiles it; each in its own process.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, xla_flags

from nme_train.train.metrics import read_metrics
from nme_train.train.probing import read_probes

pytestmark = pytest.mark.slow


def worked_example(directory) -> str:
    """Writes docs/extending.md's my_components.py and my_config.py into `directory`."""
    text = open(os.path.join(ROOT, "docs", "extending.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    files = {"my_components.py": next(b for b in blocks if 'register_model("two_layer"' in b),
             "my_config.py": next(b for b in blocks if "def get_config" in b)}
    for name, block in files.items():
        (directory / name).write_text(block)
    return str(directory / "my_config.py")


def command(*args, timeout=600):
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_a_model_regularizer_operator_and_figure_from_outside_the_package(data_dir,
                                                                          tmp_path):
    outside = tmp_path / "my_project"
    outside.mkdir()
    config = worked_example(outside)
    workdir = str(tmp_path / "run")
    flags = [f"--config={config}", f"--config.data.data_dir={data_dir}"]
    out = command("-m", "nme_train.main", *flags, f"--workdir={workdir}",
                  "--config.model.units=16")  # a setting the model declared
    assert "two_layer" in out
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["modules"] == [str(outside / "my_components.py")]
    assert saved["model"]["units"] == 16
    # the regularizer's diagnostics are logged
    logged = [r for r in read_metrics(workdir) if "train/l2_penalty/value" in r]
    assert logged and all(r["train/l2_penalty/value"] > 0 for r in logged)
    # the operator kind and the figure reach the probe records
    records = read_probes(workdir)
    assert [r["step"] for r in records] == [0, 20, 40]
    for r in records:
        for kind in ("hessian", "nme", "hessian_minus_gauss_newton"):
            top = r[f"{kind}/top_eigenvalues"]
            assert r[f"{kind}/spectral_gap"] == pytest.approx(top[0] - top[1])
        # H - G by subtraction is the NME the nme kind computes directly
        np.testing.assert_allclose(r["hessian_minus_gauss_newton/trace"], r["nme/trace"],
                                   rtol=1e-3, atol=1e-4)
        assert r["nme_split/identity_residual"] < 1e-4  # the model's twin works too
    # nme-probe rebuilds the run from config.json alone: it imports the module itself
    out = command("-m", "nme_train.commands.probe", f"--workdir={workdir}", "--step", "20",
                  "--set", "probes.lanczos_steps=6")
    offline = read_probes(workdir, "probes_offline.jsonl")
    assert [r["step"] for r in offline] == [20]
    assert "hessian_minus_gauss_newton/spectral_gap" in offline[0]
    # the dry run compiles the training step with the regularizer and prices the probes
    out = command("-m", "nme_train.main", *flags, f"--workdir={tmp_path / 'dry'}",
                  "--dry_run")
    assert "hessian_minus_gauss_newton" in out or "H-G" in out, out[-2000:]
    assert "train_step: compiled in" in out and "probe_step: compiled in" in out
    assert "probe memory per device: residuals" in out and "Lanczos basis" in out
    assert "probe cost:" in out and "at most 5% from every" in out
