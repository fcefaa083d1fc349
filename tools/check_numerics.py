"""Accelerator numerics: gradients, H v and regularized updates against a float64 reference.

    python tools/check_numerics.py                  # CIFAR ResNet-18 at width 16, batch 32
    python tools/check_numerics.py --width 64 --batch_size 128

For one model, batch and direction v it computes

  grad   the loss gradient g,
  Hv     a Hessian-vector product (forward over reverse),
  GP     the gradient-penalty update g + rho H g / ||g||   (rho = 0.1),
  GN     the Gauss-Newton trace penalty's update (sampled labels, fixed key),

in each setting: float32 with the backend's default matmul precision (on
GPUs with tensor cores that is TF32-like), float32 with precision "highest"
(skipped on a CPU, where it is the same program), and bf16 compute with
float32 parameters; and prints the relative error ||x - ref|| / ||ref|| of
each against float64 on the CPU. BatchNorm runs in training mode (batch
statistics). This is the check behind the choice to
force full float32 precision inside curvature computations.
"""

from __future__ import annotations

import argparse
import json

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import optax.tree_utils as otu  # noqa: E402

from nme_train import regularizers as reg  # noqa: E402
from nme_train.cli import load_config_file  # noqa: E402
from nme_train.curvature.products import hvp  # noqa: E402
from nme_train.data import DATASETS  # noqa: E402
from nme_train.models import build_model  # noqa: E402

SETTINGS = {  # name -> (compute dtype, parameter dtype, matmul precision)
    "float32/default": ("float32", "float32", "default"),
    "float32/highest": ("float32", "float32", "highest"),
    "bfloat16/default": ("bfloat16", "float32", "default"),
    "float64 (reference)": ("float64", "float64", "highest"),
}


def quantities(config, params, stats, images, labels, v, device):
    """{name: flat float64 numpy vector} for one setting, computed on `device`."""
    model = build_model(config.model, 10)
    dtype = jnp.dtype(config.model.param_dtype)

    def cast(tree):  # on the host: no program per leaf shape
        return jax.device_put(jax.tree.map(lambda x: np.asarray(x, dtype), tree), device)

    params, stats, v = cast(params), cast(stats), cast(v)
    x = jax.device_put(np.asarray(images, dtype), device)
    y = jax.device_put(labels, device)

    def apply_fn(p, inputs):
        logits, new = model.apply({"params": p, "batch_stats": stats}, inputs, train=True,
                                  mutable=["batch_stats"])
        return logits, new

    def loss_fn(logits, targets):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

    obj = reg.objective(apply_fn, loss_fn, has_state=True)
    batch, key = {"inputs": x, "targets": y}, jax.random.PRNGKey(0)

    def direction(p, transform):
        o = transform(obj) if transform else obj
        return jax.grad(lambda q: o(q, batch, key)[0])(p)

    @jax.jit  # the four in one program: one compile per setting
    def compute(p, w):
        return {"grad": direction(p, None),
                "Hv": hvp(lambda q: obj(q, batch, key)[0], p, w),
                "GP": direction(p, reg.gradient_penalty(0.1)),
                "GN": direction(p, reg.gauss_newton_trace_penalty(0.01))}

    out = compute(params, v)
    return {k: np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(out[k])])
            for k in ("grad", "Hv", "GP", "GN")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cifar10_resnet18.py")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()

    config = load_config_file(args.config)
    config.model.width = args.width
    spec = DATASETS[config.data.name]
    size = config.data.image_size or spec.image_size
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (args.batch_size, size, size, spec.channels)).astype(np.float64)
    images = (raw / 255.0 - np.asarray(spec.mean)) / np.asarray(spec.std)
    labels = jnp.asarray(rng.integers(0, spec.num_classes, args.batch_size), jnp.int32)

    cpu = jax.devices("cpu")[0]
    accel = jax.devices()[0]
    config.model.dtype = config.model.param_dtype = "float32"
    model = build_model(config.model, spec.num_classes)
    variables = jax.jit(model.init, static_argnames="train")(
        jax.random.PRNGKey(0), jnp.zeros((1, size, size, spec.channels)), train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    v = jax.tree.map(lambda p: rng.standard_normal(p.shape), params)
    v = jax.tree.map(lambda a: a / float(otu.tree_norm(v)), v)  # float64, on the host

    def compute(name):
        dtype, param_dtype, precision = SETTINGS[name]
        config.model.dtype, config.model.param_dtype = dtype, param_dtype
        device = cpu if dtype == "float64" else accel
        with jax.default_matmul_precision(precision):
            return quantities(config, params, stats, images, labels, v, device)

    print(f"{args.config} (width {args.width}), batch {args.batch_size}; accelerator "
          f"{accel.device_kind}, reference float64 on {cpu.device_kind}", flush=True)
    ref = compute("float64 (reference)")
    print(f"{'setting':18s} " + " ".join(f"{k:>10s}" for k in ref), flush=True)
    table = {}
    for name in SETTINGS:
        if name == "float64 (reference)":
            continue
        if name == "float32/highest" and accel.platform == "cpu":
            print(f"{name:18s} (the same program as float32/default on a CPU)", flush=True)
            continue
        got = compute(name)
        errors = {k: float(np.linalg.norm(got[k] - ref[k]) / np.linalg.norm(ref[k])) for k in ref}
        table[name] = errors
        print(f"{name:18s} " + " ".join(f"{errors[k]:10.2e}" for k in ref), flush=True)
    print(json.dumps({"device": accel.device_kind, "relative_errors": table}))


if __name__ == "__main__":
    main()
