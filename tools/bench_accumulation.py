"""The training step with k microbatches (config.grad_accum_steps) against k = 1: time per
step and peak memory, for plain training and with regularizers.

    python tools/bench_accumulation.py                                  # default CNN
    python tools/bench_accumulation.py --batch_size 1024 --ks 1 2 4 \\
        --regularizers "(('gradient_penalty', {'rho': 0.1}),)"

One device, one process, a synthetic batch of the dataset's shape (the same for every
k). Rounds alternate over the k's so that machine noise hits them alike; the figures
are median seconds per step and their ratios to k = 1. The step timed is the trainer's
(on a CPU its microbatch loop is unrolled: regularizers.accumulation.unrolled_loop);
`--loop rolled` times the `lax.scan` an accelerator runs. The memory is XLA's
per-device figure of the compiled step (arguments + outputs + temporaries - donated
buffers), of the step timed and of the rolled one (what the dry run reports). Prints a
table and one JSON line per setting.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics

import jax

from nme_train.cli import load_config_file
from nme_train.train.benchmark import one_device_experiment, time_alternating
from nme_train.train.dry_run import memory_mib


def measure(config_path: str, batch_size: int, regularizers: tuple, ks: list[int],
            rounds: int, steps: int, loop: str = "trainer") -> dict:
    runs = {}
    for k in ks:
        config = load_config_file(config_path)
        config.batch_size = batch_size or config.batch_size
        config.regularizers = regularizers
        config.grad_accum_steps = k
        options = {"rolled_microbatch_loop": True} if loop == "rolled" else {}
        program, _, batch, state = one_device_experiment(config, **options)
        compiled = program.train_step.lower(state, batch).compile()
        rolled = one_device_experiment(config.copy_and_resolve_references(),
                                       rolled_microbatch_loop=True)[0].train_step
        runs[k] = {"step": program.train_step, "state": state, "batch": batch, "times": [],
                   "memory": memory_mib(compiled), "params": program.num_params,
                   "rolled_memory": memory_mib(rolled.lower(state, batch).compile()),
                   "batch_size": config.batch_size}
        for _ in range(2):  # warm up
            runs[k]["state"], metrics = program.train_step(runs[k]["state"], batch)
        jax.block_until_ready(metrics)
    time_alternating(runs, rounds, steps)
    base = runs[ks[0]]
    base_ms = 1e3 * statistics.median(base["times"])
    out = {"config": config_path, "batch_size": base["batch_size"], "params": base["params"],
           "regularizers": [name for name, _ in regularizers] or ["none"],
           "device": jax.devices()[0].device_kind, "loop": loop, "rounds": rounds,
           "steps": steps, "k": {}}
    for k, run in runs.items():
        ms = 1e3 * statistics.median(run["times"])
        peak = run["memory"].get("peak", float("nan"))
        out["k"][k] = {"ms_per_step": ms, "time_ratio": ms / base_ms,
                       "peak_mib": peak, "temp_mib": run["memory"].get("temp", float("nan")),
                       "peak_ratio": peak / base["memory"].get("peak", float("nan")),
                       "rolled_peak_mib": run["rolled_memory"].get("peak", float("nan")),
                       "rounds_ms": [1e3 * t for t in run["times"]]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--batch_size", type=int, default=0, help="0 = the config's")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--regularizers", action="append", default=None,
                        help="a config.regularizers tuple (Python literal); repeat for "
                             "several settings; default: plain training")
    parser.add_argument("--loop", choices=("trainer", "rolled"), default="trainer",
                        help="time the trainer's step (default) or the rolled scan")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    settings = [ast.literal_eval(r) for r in args.regularizers] if args.regularizers else [()]
    for regularizers in settings:
        out = measure(args.config, args.batch_size, tuple(regularizers), args.ks, args.rounds,
                      args.steps, args.loop)
        print(f"{out['config']} ({out['params']:,} params), batch {out['batch_size']}, "
              f"regularizers {out['regularizers']}, device {out['device']}, {args.loop} loop")
        for k, r in out["k"].items():
            print(f"  k={k}: {r['ms_per_step']:9.2f} ms/step (x{r['time_ratio']:.3f})   "
                  f"peak {r['peak_mib']:8.1f} MiB (x{r['peak_ratio']:.3f}), "
                  f"temporaries {r['temp_mib']:.1f} MiB; rolled peak {r['rolled_peak_mib']:.1f}"
                  " MiB")
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
