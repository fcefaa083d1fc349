"""What curvature probes cost a training run, and how accurate their top eigenvalues are.

    python tools/bench_probes.py --config configs/imagenet_resnet50.py \
        --set model.width=8 --set data.image_size=64 --set batch_size=32 --lanczos 10,20,30
    python tools/bench_probes.py --config configs/cifar10_wrn28_10.py --flops_only   # full size

The probes are the paper's E6 settings (`configs/paper/common.with_trace_probes`:
H, G and NME; 10 shared Hutchinson probes; gradient alignment; probe batch
min(batch, 512)) plus `--lanczos` steps of Lanczos for the top and bottom
`--top_k` eigenvalues. For each Lanczos length the tool reports

- measured at the longest length (unless --flops_only): the median seconds
  of a training step and of a whole probe, on one device with a synthetic
  batch of the config's shape, through the trainer's own code
  (`program.train_step`, `RunProbes`; one probe suite is compiled, as a
  CPU process holds only so many compiled ResNet-50 programs);
- from XLA's FLOP counts (the dry run's programs): the probe's cost in
  training steps, which is what the full-size configs get;
- the probe interval that keeps probes at or under 5% of training time
  (probe cost / (interval x step + probe cost) <= 0.05, i.e. interval >=
  19 x probe cost in steps), measured and from FLOPs;
- the largest relative error bound |beta_m y_m| / |lambda| among the top-k
  Ritz values of H and of G, from the probe's tridiagonal coefficients
  (its first m rows are an m-step run's), at every length up to the largest.

Prints a table and writes one JSON line per row to `--out` if given.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import jax
import numpy as np

from nme_train.train.benchmark import one_device_experiment


def e6_probes(config, lanczos_steps: int, top_k: int):
    """The E6 probe settings with `lanczos_steps` of Lanczos for `top_k` extreme values."""
    from nme_train.cli import checkout_module

    with_trace_probes = checkout_module("configs/paper/common.py").with_trace_probes
    with config.unlocked():
        if config.num_epochs <= 0:
            config.num_epochs = 1
        with_trace_probes(config)
        config.probes.lanczos_steps = lanczos_steps
        config.probes.top_k = config.probes.bottom_k = top_k
    return config


def relative_bounds(record: dict, kind: str, steps: int, k: int) -> float:
    """The largest |bound| / |value| of the top-k Ritz values after `steps` Lanczos steps."""
    from nme_train.curvature.lanczos import LanczosResult

    t = record[f"{kind}/lanczos"]
    values, bounds = LanczosResult(t["alphas"][:steps], t["betas"][:steps]).top(k)
    return float(np.max(bounds / np.maximum(np.abs(values), 1e-30)))


def flop_costs(config, lanczos: list[int]) -> dict[int, float]:
    """Probe cost in training steps from XLA's FLOP counts, for each Lanczos length."""
    from nme_train.curvature.probes import ProbeSettings
    from nme_train.train.dry_run import dry_run

    report = dry_run(config, jax.devices()[:1])
    probe, step = report["probe_step"], report["train_step"]["flops"]
    fixed = probe["gradient_flops"] + sum(k["linearise_flops"] for k in probe["kinds"].values())
    per_matvec = sum(k["matvec_flops"] for k in probe["kinds"].values())
    costs = {}
    for steps in lanczos:
        with config.unlocked():
            config.probes.lanczos_steps = steps
        matvecs = ProbeSettings.from_config(config.probes).matvecs_per_kind()
        costs[steps] = (fixed + matvecs * per_matvec) / step
    return costs, report


def measure(config, lanczos: int, rounds: int, steps: int) -> tuple[float, float, dict]:
    """(median seconds per training step, median seconds per probe, a probe record)."""
    from nme_train.data import DATASETS
    from nme_train.train.probing import RunProbes

    program, spec, batch, state = one_device_experiment(config)
    times = []
    for i in range(rounds + 1):  # the first round compiles
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = program.train_step(state, batch)
        jax.block_until_ready((state, metrics))
        if i:
            times.append((time.perf_counter() - start) / steps)
    step_s = statistics.median(times)
    size = config.probes.batch_size
    host = {"image": np.asarray(batch["image"])[:size], "label": np.asarray(batch["label"])[:size]}
    with config.unlocked():
        config.probes.lanczos_steps = lanczos
    runner = RunProbes(config, DATASETS[config.data.name], program, None, host_batches=[host])
    seconds = []
    for i in range(rounds + 1):  # the first round compiles
        start = time.perf_counter()
        record = runner.probe(state, 0)
        if i:
            seconds.append(time.perf_counter() - start)
    return step_s, statistics.median(seconds), record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="file.py[:arg]")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a config field (narrow the model), e.g. model.width=8")
    parser.add_argument("--lanczos", default="10,20,30", help="Lanczos lengths to try")
    parser.add_argument("--top_k", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed round")
    parser.add_argument("--flops_only", action="store_true",
                        help="only the dry run's FLOP counts (full-size models)")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args(argv)

    from nme_train.cli import load_config_file
    from nme_train.config_fields import parse_assignments, set_fields

    try:
        config = load_config_file(args.config)
        set_fields(config, parse_assignments(args.set))
        lanczos = sorted(int(v) for v in args.lanczos.split(","))
    except (ValueError, KeyError) as e:
        print(f"bench_probes: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    e6_probes(config, max(lanczos), args.top_k)
    with config.unlocked():
        config.mesh.data = config.mesh.fsdp = 1
        config.data.data_dir = "/nonexistent/not-read"
    costs, report = flop_costs(config, lanczos)
    measured = {} if args.flops_only else dict(zip(("step_s", "probe_s", "record"), measure(
        config, max(lanczos), args.rounds, args.steps)))
    name = args.label or args.config
    print(f"{name}: {report['parameters']:,} parameters, batch {config.batch_size}, probe "
          f"batch {config.probes.batch_size}, {report['image_size']} px, top_k {args.top_k}")
    for length in lanczos:
        row = {"config": name, "sets": args.set, "parameters": report["parameters"],
               "batch_size": config.batch_size, "probe_batch_size": config.probes.batch_size,
               "lanczos_steps": length, "top_k": args.top_k,
               "probe_cost_steps_flops": costs[length],
               "every_for_5_percent_flops": math.ceil(19 * costs[length])}
        text = (f"  Lanczos {length:3d}: probe = {costs[length]:8.1f} steps by FLOPs "
                f"(5% from every {row['every_for_5_percent_flops']})")
        if measured and length == max(lanczos):
            probe_s, record = measured["probe_s"], measured["record"]
            row.update({"step_s": measured["step_s"], "probe_s": probe_s,
                        "probe_cost_steps_measured": probe_s / measured["step_s"],
                        "every_for_5_percent_measured":
                            math.ceil(19 * probe_s / measured["step_s"]),
                        "matvecs": record["matvecs"]})
            for kind in ("hessian", "gauss_newton"):
                row[f"{kind}/top"] = record[f"{kind}/top_eigenvalues"]
            text += (f", measured {row['probe_cost_steps_measured']:8.1f} steps "
                     f"({probe_s:.2f} s / {1e3 * measured['step_s']:.1f} ms; 5% from every "
                     f"{row['every_for_5_percent_measured']})")
        if measured:  # every length, from the longest run's tridiagonal coefficients
            for kind in ("hessian", "gauss_newton"):
                row[f"{kind}/relative_bound"] = relative_bounds(
                    measured["record"], kind, length, args.top_k)
            text += (f"; top-{args.top_k} relative bound H {row['hessian/relative_bound']:.1e}, "
                     f"G {row['gauss_newton/relative_bound']:.1e}")
        print(text, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    if measured:  # convergence against the Lanczos length, from the longest run's T
        record = measured["record"]
        for kind in ("hessian", "gauss_newton"):
            curve = {m: relative_bounds(record, kind, m, args.top_k)
                     for m in range(args.top_k + 1, max(lanczos) + 1)}
            first = next((m for m, b in curve.items() if b < 1e-2), None)
            print(f"  {kind}: top-{args.top_k} relative bound < 1e-2 from {first} Lanczos steps "
                  f"(bounds at 10/20/30: " + ", ".join(
                      f"{curve[m]:.1e}" for m in (10, 20, 30) if m in curve) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
