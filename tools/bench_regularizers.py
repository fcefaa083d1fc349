"""Times one training step with each regularizer against the plain step, in one process.

    python tools/bench_regularizers.py                       # CIFAR ResNet-18, batch 128
    python tools/bench_regularizers.py --config configs/default.py --rounds 20

Every method runs the framework's real train step (jit, donated state) on
the same synthetic batch. Rounds alternate over the methods so machine
noise hits all alike; the figure is each method's median step time over
the plain step's median. Memory comes from XLA's analysis of the compiled
step: "temp" is its temporary buffers (what a method adds on top of the
state), "peak" adds arguments and outputs less the donated buffers.
`--compile_only` prints the memory figures without timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

from nme_train.cli import load_config_file
from nme_train.sweeps.grids import TYPICAL_METHODS as METHODS
from nme_train.train.benchmark import one_device_experiment, time_alternating
from nme_train.train.dry_run import memory_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cifar10_resnet18.py")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="steps per timed round")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--compile_only", action="store_true", help="memory figures only")
    args = parser.parse_args()
    names = args.methods.split(",")

    runs = {}
    for name in names:
        config = load_config_file(args.config)
        config.batch_size = args.batch_size
        config.regularizers = METHODS[name]
        program, _, batch, state = one_device_experiment(config)
        start = time.perf_counter()
        compiled = program.train_step.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        memory = memory_mib(compiled)
        temp, peak = memory.get("temp", 0.0) * 2**20, memory.get("peak", 0.0) * 2**20
        if args.compile_only:
            print(json.dumps({"method": name, "temp_mib": temp / 2**20,
                              "peak_mib": peak / 2**20}), flush=True)
            continue
        state, metrics = compiled(state, batch)  # warm-up step
        jax.block_until_ready(state)
        runs[name] = {"step": compiled, "state": state, "batch": batch, "times": [],
                      "temp_bytes": temp, "peak_bytes": peak, "compile_s": compile_s}
        print(f"compiled {name} in {compile_s:.1f} s; temporaries {temp / 2**20:.0f} MiB",
              flush=True)

    if args.compile_only:
        return
    time_alternating(runs, args.rounds, args.steps)

    base = statistics.median(runs[names[0]]["times"])
    print(f"\n{args.config}, batch {args.batch_size}, {args.rounds} rounds of {args.steps}, "
          f"device {jax.devices()[0].device_kind}")
    print(f"{'method':34s} {'median s':>9s} {'ratio':>6s} {'temp MiB':>9s} {'peak MiB':>9s}")
    results = {}
    for name in names:
        med = statistics.median(runs[name]["times"])
        results[name] = {"regularizers": METHODS[name], "median_s": med, "ratio": med / base,
                         "temp_mib": runs[name]["temp_bytes"] / 2**20,
                         "peak_mib": runs[name]["peak_bytes"] / 2**20,
                         "times_s": runs[name]["times"]}
        print(f"{name:34s} {med:9.3f} {med / base:6.2f} {runs[name]['temp_bytes'] / 2**20:9.0f} "
              f"{runs[name]['peak_bytes'] / 2**20:9.0f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
