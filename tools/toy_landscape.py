"""E7: loss and NME of a one-datapoint MSE MLP over a 2-D slice of two hidden weights.

    python tools/toy_landscape.py                          # configs/paper/e7.py
    python tools/toy_landscape.py --out docs/results --resolution 121

Writes OUT/toy_landscape.png (rows: activations; columns: the loss and
log10 of the NME norm over the slice, the region boundaries dashed) and
OUT/toy_landscape.json: per activation, the largest NME norm and the share
of the NME norm (summed over the slice) within `band`/beta of a boundary,
measured by the pre-activation of the sliced units (for ReLU the NME block
is exactly 0 off the boundaries). The NME is computed by the framework's
own product (nme_train.curvature.nme_vp) in float64, one column per
parameter direction; tests/test_paper.py checks it against 2 (f - y)
times the dense Hessian of f.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from nme_train.cli import CHECKOUT
from nme_train.curvature.products import nme_vp
from nme_train.models.activations import get_activation


def parse_activation(spec: str):
    """("relu" | "beta_gelu:BETA") -> (label, function, beta or inf)."""
    name, _, beta = spec.partition(":")
    if name == "beta_gelu":
        b = float(beta or 1.0)
        return f"β-GELU, β={b:g}", get_activation("beta_gelu", beta=b), b
    if name == "relu":
        return "ReLU", get_activation("relu"), float("inf")
    raise ValueError(f"activation {spec!r}: use relu or beta_gelu:BETA")


def init_params(config) -> dict:
    k1, k2 = jax.random.split(jax.random.PRNGKey(config.seed))
    width, d = config.width, len(config.x)
    return {"w1": jax.random.normal(k1, (d, width), jnp.float64) / np.sqrt(d),
            "b1": jnp.zeros((width,), jnp.float64),
            "w2": jax.random.normal(k2, (width,), jnp.float64) / np.sqrt(width),
            "b2": jnp.zeros((), jnp.float64)}


def landscape(config, activation, params: dict, grid: np.ndarray):
    """(loss, NME norm, pre-activations of units 0 and 1) over the slice grid [n, n]."""
    x = jnp.asarray(config.x, jnp.float64)
    y = jnp.asarray(config.y, jnp.float64)

    def model(p):
        return jnp.dot(p["w2"], activation(x @ p["w1"] + p["b1"])) + p["b2"]

    def loss_of_outputs(z):
        return (z - y) ** 2

    flat, unravel = ravel_pytree(params)
    mask, offset = np.zeros(flat.size, bool), 0  # the first layer's entries of the flat vector
    for k, v in sorted(params.items()):  # ravel_pytree's order: the dict's sorted keys
        mask[offset:offset + v.size] = k in ("w1", "b1")
        offset += v.size
    directions = jnp.eye(flat.size)[mask]

    def at(a, b):
        p = {**params, "w1": params["w1"].at[0, 0].set(a).at[0, 1].set(b)}
        z = model(p)
        columns = jax.vmap(lambda e: ravel_pytree(
            nme_vp(model, loss_of_outputs, p, unravel(e)))[0])(directions)
        block = columns[:, mask]
        pre = x @ p["w1"] + p["b1"]
        return loss_of_outputs(z), jnp.sqrt(jnp.sum(block ** 2)), pre[0], pre[1]

    a, b = np.meshgrid(grid, grid, indexing="xy")
    out = jax.jit(jax.vmap(at))(jnp.asarray(a.ravel()), jnp.asarray(b.ravel()))
    return [np.asarray(o).reshape(a.shape) for o in out]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(CHECKOUT, "configs", "paper", "e7.py"))
    parser.add_argument("--out", default=".", help="directory for the PNG and JSON")
    parser.add_argument("--resolution", type=int, default=0, help="grid points per side")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # the landscape is computed in float64
    import importlib.util

    spec = importlib.util.spec_from_file_location("_e7", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    n = args.resolution or config.resolution
    grid = np.linspace(-config.extent, config.extent, n)
    params = init_params(config)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(config.activations)
    fig, axes = plt.subplots(rows, 2, figsize=(9, 3.6 * rows), squeeze=False)
    report = {"config": config.to_dict(), "rows": []}
    extent = [-config.extent, config.extent, -config.extent, config.extent]
    for r, spec_string in enumerate(config.activations):
        label, activation, beta = parse_activation(spec_string)
        loss, nme, pre0, pre1 = landscape(config, activation, params, grid)
        distance = np.minimum(np.abs(pre0), np.abs(pre1))  # to the nearer boundary
        total = float(nme.sum())
        within = float(nme[distance < config.band / beta].sum()) if np.isfinite(beta) else 0.0
        row = {"activation": spec_string, "beta": beta if np.isfinite(beta) else None,
               "loss_min": float(loss.min()), "loss_max": float(loss.max()),
               "nme_max": float(nme.max()), "nme_mean": float(nme.mean()),
               "share_within_band": within / total if total > 0 else None}
        report["rows"].append(row)
        axes[r, 0].imshow(loss, origin="lower", extent=extent, cmap="viridis")
        axes[r, 0].set_title(f"{label}: loss")
        shown = np.log10(np.maximum(nme, 1e-12))
        im = axes[r, 1].imshow(shown, origin="lower", extent=extent, cmap="magma",
                               vmin=max(shown.max() - 8, -12))
        axes[r, 1].set_title(f"{label}: log10 ||NME|| (first layer)" if nme.max() > 0
                             else f"{label}: ||NME|| = 0 on the whole slice")
        fig.colorbar(im, ax=axes[r, 1], fraction=0.046)
        for ax in axes[r]:
            ax.contour(grid, grid, pre0, levels=[0.0], colors="white", linestyles="--",
                       linewidths=0.8)
            ax.contour(grid, grid, pre1, levels=[0.0], colors="white", linestyles="--",
                       linewidths=0.8)
            ax.set_xlabel("W1[0, 0]")
            ax.set_ylabel("W1[0, 1]")
        share = "—" if row["share_within_band"] is None else f"{row['share_within_band']:.4f}"
        print(f"{label:>16}: loss {row['loss_min']:.3g}..{row['loss_max']:.3g} | max ||NME|| "
              f"{row['nme_max']:.3g} | share within {config.band:g}/β of a boundary {share}")
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "toy_landscape.png")
    fig.savefig(png, dpi=100)
    with open(os.path.join(args.out, "toy_landscape.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {png} and toy_landscape.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
