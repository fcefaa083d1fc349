"""What a sweep costs on accelerators: device-hours per arm and in all, from XLA's FLOP
counts of each point's training step and probes and a measured FLOP rate.

    python tools/sweep_cost.py --config configs/paper/contrasts.py:imagenet
    python tools/sweep_cost.py --config configs/paper/contrasts.py:cifar10 --json

For each group of points that run the same program (the tags but rho, sigma2 and the
seed: those change numbers, not the program) the training step is lowered from shapes for
the point's full-size config (nothing is compiled or run) and XLA's FLOP count taken, and
the probe likewise once per model (nme_train.train.dry_run.step_and_probe_flops). A
ResNet-50 grid takes minutes: each probe kind is lowered at full size.
A run costs steps x step FLOPs + probes x probe FLOPs, at `--tflops` per device-second.

The default rate is the one measured for the plain ResNet-50 step on one NVIDIA H200
(docs/benchmarks.md: batch 256 at 224 px, bf16, 38.2 ms per step), over XLA's count of
that step (6.09 TFLOP): 159 TFLOP/s. It is the plain step's rate; the same H200 ran SAM
at 1.96x and the gradient penalty at 2.67x the plain step's time, where their FLOPs are
2.0x and 3.0x: for those the FLOP estimate is 2-11% high. Other models and devices
differ: give the rate you measured (`tools/bench_throughput.py`).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax

from nme_train.cli import load_config_file
from nme_train.config_fields import set_fields
from nme_train.sweeps.plan import load_experiment
from nme_train.train.dry_run import flop_text, step_and_probe_flops

H200_RESNET50_TFLOPS = 6.09 / 0.0382  # XLA's TFLOP per plain step / measured seconds
VALUE_TAGS = ("rho", "sigma2", "seed")


def total_steps(config) -> int:
    from configs.paper import common

    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return int(config.num_epochs * common.epoch_steps(config))


def sweep_cost(config_arg: str, tflops: float, overrides: dict | None = None) -> dict:
    """Device-hours of every group of the grid, and in all."""
    module, scale, path = load_experiment(config_arg)
    groups: dict[tuple, dict] = {}
    for point in module.grid(scale):
        key = tuple((k, v) for k, v in point.tags if k not in VALUE_TAGS)
        groups.setdefault(key, {"points": [], "example": point.name})["points"].append(
            point.name)
    rows, probe_flops = [], {}
    for key, group in groups.items():
        config = load_config_file(f"{path}:{scale}/{group['example']}")
        with config.unlocked():
            set_fields(config, (overrides or {}).items(), "--set")
        # the probe depends on the model and the probe settings, not on the regularizer
        probe_key = (config.model.to_json(), config.probes.to_json(), config.data.to_json())
        flops = step_and_probe_flops(config, probe=probe_key not in probe_flops)
        flops["probe"] = probe_flops.setdefault(probe_key, flops["probe"])
        steps = total_steps(config)
        every = config.probes.every_steps
        probes = (steps // every + 1) if every else 0
        run_flops = steps * flops["train_step"] + probes * flops["probe"]
        rows.append({"group": dict(key), "points": len(group["points"]), "steps": steps,
                     "batch_size": config.batch_size, "step_flops": flops["train_step"],
                     "probes": probes, "probe_flops": flops["probe"],
                     "hours_per_run": run_flops / (tflops * 1e12) / 3600,
                     "probe_share": probes * flops["probe"] / run_flops if run_flops else 0.0})
    for row in rows:
        row["hours"] = row["hours_per_run"] * row["points"]
    return {"config": config_arg, "tflops": tflops, "groups": rows,
            "points": sum(r["points"] for r in rows),
            "hours": sum(r["hours"] for r in rows)}


def print_table(cost: dict) -> None:
    print(f"{cost['config']}: {cost['points']} points at {cost['tflops']:.0f} TFLOP/s per "
          "device")
    print("| group | points | steps x batch | FLOP / step | probes (share) | "
          "device-hours per run | device-hours |")
    print("|---|---|---|---|---|---|---|")
    for r in cost["groups"]:
        name = ",".join(f"{k}={v}" for k, v in r["group"].items())
        print(f"| {name} | {r['points']} | {r['steps']:,} x {r['batch_size']} | "
              f"{flop_text(r['step_flops'])} | {r['probes']} ({r['probe_share']:.1%}) | "
              f"{r['hours_per_run']:.1f} | {r['hours']:,.0f} |")
    print(f"total: {cost['hours']:,.0f} device-hours")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="an experiment file and its scale, "
                        "configs/paper/contrasts.py:imagenet")
    parser.add_argument("--tflops", type=float, default=H200_RESNET50_TFLOPS,
                        help="achieved TFLOP/s per device (default: ResNet-50 on an H200)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field of every point (e.g. a smaller "
                        "data.image_size for a quick look), repeatable")
    parser.add_argument("--json", action="store_true", help="one JSON object instead")
    args = parser.parse_args(argv)
    overrides = {}
    try:
        for item in args.set:
            field, _, value = item.partition("=")
            try:
                overrides[field] = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"--set {item!r}: give FIELD=VALUE with a JSON value, e.g. "
                                 "data.image_size=64") from None
        with jax.default_device(jax.devices("cpu")[0]):
            cost = sweep_cost(args.config, args.tflops, overrides)
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(cost))
    else:
        print_table(cost)
    return 0


if __name__ == "__main__":
    sys.exit(main())
