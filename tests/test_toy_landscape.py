"""E7, the toy landscape: its NME against the dense Hessian, and the tool."""

import importlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, assert_plot, tool

pytestmark = pytest.mark.slow


def module(name):
    return importlib.import_module(f"configs.paper.{name}")



@pytest.mark.usefixtures("float64")
def test_toy_landscape_nme_against_the_dense_hessian():
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    toy_landscape = tool("toy_landscape")

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
