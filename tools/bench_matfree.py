"""The curvature core's Lanczos, Hutchinson and SLQ side by side with matfree's.

    python tools/bench_matfree.py accuracy     # float64, a tiny MLP against its dense Hessian
    python tools/bench_matfree.py speed        # the CNN of configs/fashion_mnist_cnn.py, batch 128
    python tools/bench_matfree.py speed --config configs/cifar10_resnet18.py --batch_size 32
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tools/bench_matfree.py sharding

matfree (https://github.com/pnkraemer/matfree, `pip install matfree`) is a
maintained JAX library of matrix-free linear algebra. The same operators are
given to both: `Curvature.linear_operator(kind, ...)`, linearised once.

  accuracy   Ritz values of H after --steps Lanczos steps (nme_train.curvature
             .lanczos_iterate; matfree.decomp.tridiag_sym, full
             reorthogonalisation) against the eigenvalues of the dense float64
             Hessian; tr H by Hutchinson with --probes Rademacher vectors
             (hutchinson_quadratic_forms; matfree.stochtrace
             .estimator_monte_carlo with monte_carlo_trace and sampler_signs);
             tr H^2 by SLQ (slq_nodes_and_weights; matfree.funm
             .monte_carlo_funm_sym), each against the exact value.
  speed      seconds per Lanczos run of --steps steps and per Hutchinson
             estimate of --probes probes (compiled beforehand; --rounds
             rounds alternating between the two libraries, medians and the
             ratio per round), and the compiled programs' memory (XLA's
             memory analysis: arguments, outputs, temporaries).
  sharding   the parameters sharded over every device (fsdp): the layout of
             each library's basis and the per-device bytes of its programs.

Prints one line per figure and a JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu


def _matfree():
    try:
        from matfree import decomp, funm, stochtrace
    except ImportError as e:  # an optional dependency of this benchmark only
        raise SystemExit(f"error: {e}; install it with `pip install matfree`") from None
    return decomp, funm, stochtrace


def matfree_lanczos(steps: int):
    """(linear, v0) -> (alphas, betas) from matfree's tridiagonalisation, jitted."""
    decomp, _, _ = _matfree()
    tridiag = decomp.tridiag_sym(steps, materialize=False, reortho="full")

    @jax.jit
    def run(linear, v0):
        result = tridiag(lambda v: linear(v), v0)
        diag, off = result.J_small
        # our convention: betas[i] couples steps i and i + 1; the last one is the residual's
        return diag, jnp.concatenate([off, otu.tree_norm(result.residual)[None]])
    return run


def our_vectors(params, probes: int):
    """A matfree sampler drawing the vectors hutchinson_quadratic_forms draws."""
    from nme_train import curvature as cv

    def sample(key):
        vectors = [cv.rademacher_like(jax.random.fold_in(key, j), params) for j in range(probes)]
        return jax.tree.map(lambda *x: jnp.stack(x), *vectors)
    return sample


def matfree_trace(params, probes: int, sampler=None):
    """(linear, key) -> Hutchinson's tr M with matfree's estimator, jitted."""
    _, _, stochtrace = _matfree()
    estimate = stochtrace.estimator_monte_carlo(
        stochtrace.monte_carlo_trace(), sampler or stochtrace.sampler_signs(params, num=probes))
    return jax.jit(lambda linear, key: estimate(lambda v: linear(v), key))


def matfree_slq(params, probes: int, steps: int, f):
    """(linear, key) -> SLQ's tr f(M) with matfree, jitted."""
    decomp, funm, stochtrace = _matfree()
    integrand = funm.monte_carlo_funm_sym(funm.dense_funm_sym_eigh(f),
                                          decomp.tridiag_sym(steps, reortho="full"))
    estimate = stochtrace.estimator_monte_carlo(integrand,
                                                stochtrace.sampler_signs(params, num=probes))
    return jax.jit(lambda linear, key: estimate(lambda v: linear(v), key))


def ritz_extremes(alphas, betas, k: int) -> tuple[np.ndarray, np.ndarray]:
    from nme_train import curvature as cv

    result = cv.LanczosResult(np.asarray(alphas, np.float64), np.asarray(betas, np.float64))
    return np.asarray(result.top(k)[0]), np.asarray(result.bottom(k)[0])


def tiny_problem(seed: int = 0):
    """A float64 MLP (5 -> 6 -> 6 -> 3, GELU), 40 examples: (curvature, params, batches,
    dense Hessian)."""
    from jax.flatten_util import ravel_pytree

    from nme_train import curvature as cv

    rng = np.random.default_rng(seed)
    sizes = [(5, 6), (6, 6), (6, 3)]
    params = {f"layer{i}": {"w": jnp.asarray(rng.normal(0, 1 / np.sqrt(a), (a, b))),
                            "b": jnp.asarray(rng.normal(0, 0.1, b))}
              for i, (a, b) in enumerate(sizes)}

    def apply_fn(p, x):
        for i in range(len(sizes)):
            x = x @ p[f"layer{i}"]["w"] + p[f"layer{i}"]["b"]
            if i < len(sizes) - 1:
                x = jax.nn.gelu(x, approximate=False)
        return x

    batch = {"inputs": jnp.asarray(rng.normal(size=(40, 5))),
             "targets": jnp.asarray(rng.integers(0, 3, 40))}
    curv = cv.Curvature(apply_fn, cv.softmax_cross_entropy())
    flat, unravel = ravel_pytree(params)
    dense = jax.hessian(lambda f: curv.loss_value(unravel(f), [batch]))(flat)
    return curv, params, [batch], np.asarray(dense)


def accuracy(args) -> dict:
    jax.config.update("jax_enable_x64", True)
    from nme_train import curvature as cv
    from nme_train.curvature.estimators import slq_nodes_and_weights

    curv, params, batches, dense = tiny_problem()
    eig = np.linalg.eigvalsh(dense)
    linear = curv.linear_operator("hessian", params, batches)
    v0 = cv.rademacher_like(jax.random.PRNGKey(1), params)
    k = 3
    out: dict = {"parameters": int(dense.shape[0]), "steps": args.steps}
    ours = cv.lanczos_iterate(linear, v0, args.steps)
    theirs = matfree_lanczos(args.steps)(linear, v0)
    for name, (a, b) in (("nme_train", (ours.alphas, ours.betas)), ("matfree", theirs)):
        top, bottom = ritz_extremes(a, b, k)
        err = max(np.max(np.abs(top - eig[::-1][:k])), np.max(np.abs(bottom - eig[:k])))
        out[f"{name}/ritz_abs_error"] = float(err / np.max(np.abs(eig)))
    exact_trace, exact_sq = float(np.trace(dense)), float(np.sum(dense**2))
    key = jax.random.PRNGKey(2)
    forms = cv.hutchinson_quadratic_forms(linear, params, key, args.probes).sum(axis=1)
    out["nme_train/trace_rel_error"] = abs(forms.mean() - exact_trace) / abs(exact_trace)
    out["matfree/trace_rel_error"] = abs(float(matfree_trace(params, args.probes)(
        linear, key)) - exact_trace) / abs(exact_trace)
    out["trace_standard_error_rel"] = forms.std(ddof=1) / np.sqrt(args.probes) / abs(exact_trace)
    same = float(matfree_trace(params, args.probes, our_vectors(params, args.probes))(linear, key))
    out["same_vectors_trace_rel_difference"] = abs(same - forms.mean()) / abs(exact_trace)
    runs = [cv.lanczos_iterate(linear, cv.rademacher_like(jax.random.fold_in(key, 100 + j),
                                                          params), args.slq_steps)
            for j in range(args.probes)]
    nodes, weights = slq_nodes_and_weights(runs)
    ours_sq = dense.shape[0] * float(np.sum(weights * nodes**2))
    theirs_sq = float(matfree_slq(params, args.probes, args.slq_steps, lambda x: x**2)(
        linear, key))
    out["nme_train/slq_rel_error"] = abs(ours_sq - exact_sq) / exact_sq
    out["matfree/slq_rel_error"] = abs(theirs_sq - exact_sq) / exact_sq
    for name, value in out.items():
        print(f"{name}: {value:.3g}" if isinstance(value, float) else f"{name}: {value}")
    return out


def _problem(args, devices):
    """(curvature, params, batches, parameter shardings) of --config at --batch_size."""
    from nme_train import curvature as cv
    from nme_train.cli import load_config_file
    from nme_train.train.benchmark import one_device_experiment
    from nme_train.train.step import make_normalize

    config = load_config_file(args.config)
    config.batch_size = args.batch_size
    config.sharding.fsdp_min_size = 1
    program, spec, batch, state = one_device_experiment(config, devices)
    normalize = make_normalize(spec.mean, spec.std)

    def apply_fn(params, inputs):  # BatchNorm in evaluation mode, as bench_curvature
        variables = {"params": params, **inputs["model_state"]}
        return program.model.apply(variables, normalize(inputs["images"]), train=False)

    curv = cv.Curvature(apply_fn, cv.softmax_cross_entropy())
    batches = [{"inputs": {"images": batch["image"], "model_state": state.model_state},
                "targets": batch["label"]}]
    return curv, state.params, batches, program.state_sharding.params, program.num_params


def _memory(jitted, *args) -> dict:
    from nme_train.train.dry_run import memory_mib

    return memory_mib(jitted.lower(*args).compile())


def speed(args) -> dict:
    from nme_train import curvature as cv
    from nme_train.curvature.lanczos import lanczos_start_jit, lanczos_step_jit
    from nme_train.curvature.probes import basis_bytes

    curv, params, batches, _, num_params = _problem(args, jax.devices()[:1])
    linear = jax.jit(curv.linear_operator, static_argnums=0)("hessian", params, batches)
    v0 = jax.jit(cv.rademacher_like)(jax.random.PRNGKey(0), params)
    key = jax.random.PRNGKey(1)
    theirs_lanczos = matfree_lanczos(args.steps)
    theirs_trace = matfree_trace(params, args.probes)
    runs = {
        "nme_train/lanczos": lambda: cv.lanczos_iterate(linear, v0, args.steps).alphas,
        "matfree/lanczos": lambda: theirs_lanczos(linear, v0)[0],
        "nme_train/hutchinson": lambda: cv.hutchinson_quadratic_forms(linear, params, key,
                                                                      args.probes),
        "matfree/hutchinson": lambda: theirs_trace(linear, key),
    }
    out: dict = {"config": args.config, "batch_size": args.batch_size, "parameters": num_params,
                 "steps": args.steps, "probes": args.probes,
                 "device": jax.devices()[0].device_kind}
    for fn in runs.values():  # compile
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    for what in ("lanczos", "hutchinson"):
        ours, theirs = times[f"nme_train/{what}"], times[f"matfree/{what}"]
        ratios = sorted(t / o for t, o in zip(theirs, ours))
        out[what] = {"nme_train_s": statistics.median(ours), "matfree_s": statistics.median(theirs),
                     "matfree_over_nme_train": statistics.median(ratios),
                     "ratio_range": [ratios[0], ratios[-1]]}
        print(f"{what}: nme_train {statistics.median(ours):.3f} s, matfree "
              f"{statistics.median(theirs):.3f} s; matfree / nme_train "
              f"{statistics.median(ratios):.2f}x [{ratios[0]:.2f}, {ratios[-1]:.2f}] over "
              f"{args.rounds} rounds", flush=True)
    step = _memory(lanczos_step_jit(), linear, 0, *lanczos_start_jit()(v0, args.steps, None))
    out["memory_mib"] = {
        "nme_train/lanczos": {"basis": basis_bytes(params, args.steps) / 2**20,
                              "step_temp": step.get("temp")},
        "matfree/lanczos": _memory(theirs_lanczos, linear, v0),
        "nme_train/hutchinson_probe_temp": _memory(
            jax.jit(lambda lin, v: lin(v)), linear, v0).get("temp"),
        "matfree/hutchinson": _memory(theirs_trace, linear, key)}
    print("memory (MiB): " + json.dumps(out["memory_mib"]), flush=True)
    return out


def sharding(args) -> dict:
    from nme_train import curvature as cv
    from nme_train.curvature.lanczos import _hashable, lanczos_start_jit, lanczos_step_jit

    devices = jax.devices()
    if len(devices) < 2:
        raise SystemExit("error: the sharding comparison needs several devices; on CPU run it "
                         "with XLA_FLAGS=--xla_force_host_platform_device_count=8")
    curv, params, batches, shardings, num_params = _problem(args, devices)
    linear = jax.jit(curv.linear_operator, static_argnums=0)("hessian", params, batches)
    v0 = jax.jit(cv.rademacher_like, out_shardings=shardings)(jax.random.PRNGKey(0), params)
    ours = cv.lanczos_iterate(linear, v0, args.steps, shardings, keep_basis=True)
    theirs = jax.jit(lambda lin, v: _matfree()[0].tridiag_sym(args.steps, reortho="full")(
        lambda u: lin(u), v).Q_tall)(linear, v0)

    def layout(basis) -> dict:
        leaves = jax.tree.leaves(basis)
        total = sum(x.nbytes for x in leaves)
        per_device = sum(max(s.data.nbytes for s in x.addressable_shards) for x in leaves)
        return {"bytes": total, "largest_shard_bytes_summed": per_device,
                "fraction_per_device": per_device / total,
                "specs": sorted({str(x.sharding.spec) for x in leaves
                                 if hasattr(x.sharding, "spec")})[:4]}

    step = _memory(lanczos_step_jit(), linear, 0,
                   *lanczos_start_jit()(v0, args.steps, _hashable(shardings)))
    theirs_mem = _memory(jax.jit(lambda lin, v: _matfree()[0].tridiag_sym(
        args.steps, reortho="full")(lambda u: lin(u), v).J_small), linear, v0)
    out = {"devices": len(devices), "parameters": num_params, "steps": args.steps,
           "nme_train/basis": layout(ours.basis), "matfree/basis": layout(theirs),
           "nme_train/step_mib_per_device": step, "matfree/run_mib_per_device": theirs_mem}
    for name in ("nme_train/basis", "matfree/basis"):
        print(f"{name}: {out[name]['fraction_per_device']:.3f} of the basis on each device "
              f"(specs {out[name]['specs']})", flush=True)
    print(f"per-device MiB: nme_train Lanczos step {json.dumps(step)}; matfree whole run "
          f"{json.dumps(theirs_mem)}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["accuracy", "speed", "sharding"])
    parser.add_argument("--config", default="configs/fashion_mnist_cnn.py")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None,
                        help="Lanczos steps (default: 40 for accuracy, 20 otherwise)")
    parser.add_argument("--probes", type=int, default=None,
                        help="Hutchinson / SLQ vectors (default: 100 for accuracy, 10 otherwise)")
    parser.add_argument("--slq_steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    accurate = args.section == "accuracy"
    args.steps = args.steps or (40 if accurate else 20)
    args.probes = args.probes or (100 if accurate else 10)
    out = {"accuracy": accuracy, "speed": speed, "sharding": sharding}[args.section](args)
    print(json.dumps({"section": args.section, **out}))


if __name__ == "__main__":
    main()
