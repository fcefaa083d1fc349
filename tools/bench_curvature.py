"""Cost of the curvature products and of a Lanczos run, as ratios to one gradient.

    python tools/bench_curvature.py                        # CIFAR ResNet-18, batch 128
    python tools/bench_curvature.py --config configs/default.py --batch_size 256 --steps 30

On one device, synthetic data of the dataset's shape, BatchNorm in the
mode of --batch_norm (running_average = evaluation mode, as the peers in
PERFORMANCE.md were measured). Every figure is measured --rounds times in
one process, the rounds interleaving all measurements; each ratio divides
a measurement by the gradient of its own round, and is reported as median
[min, max] over the rounds. Prints:

  gradient                  jit(grad L), the unit of every ratio;
  single  H v, G v, NME v   one product from scratch (its forward and backward
                            work included), jitted;
  amortised                 per matvec inside a Lanczos run (lanczos_iterate) whose
                            operator was linearised once: (T(m2) - T(m1)) / (m2 - m1)
                            for two run lengths, reorthogonalisation included; also
                            the linear map alone and the one-off linearisation;
  convergence               one --steps Lanczos run on H: the top Ritz value after
                            m steps (the leading m x m block of T) against the
                            final one, the matvecs needed for 1e-3 and 1e-6
                            relative, and the final error bound;
  memory                    the linearisation's residuals, the basis (--steps + 1
                            vectors) and the Lanczos step's temporaries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

from nme_train import curvature as cv
from nme_train.cli import load_config_file
from nme_train.curvature.lanczos import lanczos_start_jit, lanczos_step_jit
from nme_train.curvature.probes import basis_bytes
from nme_train.train.benchmark import one_device_experiment
from nme_train.train.dry_run import memory_mib


def seconds(fn) -> float:
    """Wall seconds of one call of `fn` (compiled beforehand), its outputs ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cifar10_resnet18.py")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--batch_norm", default="running_average",
                        choices=["running_average", "batch_stats"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--m1", type=int, default=3)
    parser.add_argument("--m2", type=int, default=9)
    parser.add_argument("--steps", type=int, default=40, help="convergence run length (0: skip)")
    parser.add_argument("--kinds", default=",".join(cv.KINDS))
    args = parser.parse_args()
    kinds = args.kinds.split(",")

    config = load_config_file(args.config)
    config.batch_size = args.batch_size
    program, spec, batch, state = one_device_experiment(config)
    from nme_train.train.step import make_normalize

    normalize = make_normalize(spec.mean, spec.std)
    train = args.batch_norm == "batch_stats"

    def apply_fn(params, inputs):
        variables = {"params": params, **inputs["model_state"]}
        if train and inputs["model_state"]:
            return program.model.apply(variables, normalize(inputs["images"]), train=True,
                                   mutable=["batch_stats"])[0]
        return program.model.apply(variables, normalize(inputs["images"]), train=train)

    curv = cv.Curvature(apply_fn, cv.softmax_cross_entropy())
    batches = [{"inputs": {"images": batch["image"], "model_state": state.model_state},
                "targets": batch["label"]}]
    params = state.params
    v = jax.jit(cv.rademacher_like)(jax.random.PRNGKey(0), params)
    results: dict = {"config": args.config, "batch_size": args.batch_size,
                     "batch_norm": args.batch_norm, "device": jax.devices()[0].device_kind,
                     "parameters": program.num_params}

    grad = jax.jit(curv.gradient)
    build = jax.jit(curv.linear_operator, static_argnums=0)
    singles = {kind: jax.jit(lambda p, bs, u, kind=kind: curv.operator(
        kind, p, bs, linearize=False)(u)) for kind in kinds}
    once = {"gradient": lambda: grad(params, batches)}  # each timed program, warmed up
    for kind in kinds:
        once[f"{kind}/single"] = lambda k=kind: singles[k](params, batches, v)
        once[f"{kind}/build"] = lambda k=kind: build(k, params, batches)
    for fn in once.values():
        jax.block_until_ready(fn())
    # Rounds interleave every measurement, and each ratio divides by the gradient of its
    # own round: a change of machine load between measurements cannot bias a ratio.
    samples: dict[str, list[float]] = {"gradient": []}
    for _ in range(args.rounds):
        samples["gradient"].append(seconds(once["gradient"]))
        for kind in kinds:
            linear = build(kind, params, batches)
            runs = {m: seconds(lambda m=m, lin=linear: cv.lanczos_iterate(lin, v, m).alphas)
                    for m in (args.m1, args.m2)}
            for name, value in (
                    ("single", seconds(once[f"{kind}/single"])),
                    ("linearise", seconds(once[f"{kind}/build"])),
                    ("apply", seconds(lambda lin=linear: cv.apply(lin, v))),
                    ("amortised", (runs[args.m2] - runs[args.m1]) / (args.m2 - args.m1))):
                samples.setdefault(f"{kind}/{name}", []).append(value)
            del linear
    base = statistics.median(samples["gradient"])
    results["gradient_s"] = base
    results["gradient_rounds_s"] = samples["gradient"]
    rounds = ", ".join(f"{t:.3f}" for t in samples["gradient"])
    print(f"gradient: median {base:.3f} s (rounds {rounds})", flush=True)
    for kind in kinds:
        ratios = {name: sorted(t / g for t, g in zip(samples[f"{kind}/{name}"],
                                                     samples["gradient"]))
                  for name in ("single", "amortised", "apply")}
        spread = {name: {"min": r[0], "median": statistics.median(r), "max": r[-1]}
                  for name, r in ratios.items()}
        linear = build(kind, params, batches)
        residual_mib = sum(x.nbytes for x in jax.tree.leaves(linear)) / 2**20
        basis_mib = basis_bytes(params, args.steps or args.m2) / 2**20
        temp = memory_mib(lanczos_step_jit().lower(linear, 0, *lanczos_start_jit()(
            v, args.m2, None)).compile()).get("temp", float("nan"))
        del linear
        amortised = statistics.median(samples[f"{kind}/amortised"])
        results[kind] = {
            "single_s": statistics.median(samples[f"{kind}/single"]),
            "single_ratio": spread["single"]["median"], "amortised_s": amortised,
            "amortised_ratio": spread["amortised"]["median"],
            "apply_ratio": spread["apply"]["median"], "ratios": spread,
            "linearise_s": statistics.median(samples[f"{kind}/linearise"]),
            "residual_mib": residual_mib, "basis_mib": basis_mib, "step_temp_mib": temp,
            "probe_peak_mib": residual_mib + basis_mib + temp}

        def span(name, spread=spread):
            r = spread[name]
            return f"{r['median']:.2f}x [{r['min']:.2f}, {r['max']:.2f}]"

        print(f"{kind:13s} single {span('single')} | in Lanczos {span('amortised')} per "
              f"matvec (linear map alone {span('apply')}; linearisation "
              f"{results[kind]['linearise_s']:.2f} s once) | residuals {residual_mib:.0f} MiB, "
              f"basis {basis_mib:.0f} MiB, step temporaries {temp:.0f} MiB", flush=True)

    if args.steps:
        start = time.perf_counter()
        linear = build("hessian", params, batches)
        full = cv.lanczos_iterate(linear, v, args.steps)
        wall = time.perf_counter() - start
        alphas, betas = full.alphas, full.betas
        (reference,), (bound,) = full.top(1)
        history = []
        for m in range(1, full.steps + 1):
            (value,), (err,) = cv.LanczosResult(alphas[:m], betas[:m]).top(1)
            history.append((m, float(value), float(err)))
        rel = [(m, abs(val - reference) / abs(reference)) for m, val, _ in history]
        need = {tol: next((m for m, r in rel if r <= tol), None) for tol in (1e-3, 1e-6)}
        per = results["hessian"]["amortised_s"] if "hessian" in results else wall / full.steps
        lin_s = results["hessian"]["linearise_s"] if "hessian" in results else 0.0
        to_1e3 = lin_s + per * need[1e-3] if need[1e-3] else None
        results["convergence"] = {
            "steps": full.steps, "wall_s": wall, "top_eigenvalue": float(reference),
            "final_error_bound": float(bound), "matvecs_to_1e-3": need[1e-3],
            "matvecs_to_1e-6": need[1e-6], "seconds_to_1e-3": to_1e3, "history": history}
        print(f"Lanczos on H, {full.steps} steps in {wall:.0f} s: top eigenvalue {reference:.6g} "
              f"(error bound {bound:.2g}); within 1e-3 relative after {need[1e-3]} matvecs "
              f"({to_1e3 or float('nan'):.0f} s with the linearisation), 1e-6 after "
              f"{need[1e-6]}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
