"""Training throughput (images/s) and FLOP utilisation of the step with each regularizer.

    python tools/bench_throughput.py                      # ImageNet ResNet-50, bf16, 224x224
    python tools/bench_throughput.py --batch_size 256 --methods plain,sam,gradient_penalty
    python tools/bench_throughput.py --config configs/cifar10_resnet18.py --batch_size 128

Synthetic data of the dataset's shape (no data is read), one device, the
framework's real jitted step. Rounds of `--steps` steps alternate over the
methods. For each method it prints the median step time, images/s, and two
utilisations against the device's peak (`--peak_tflops`, or a table of
known devices' dense bf16 peaks):

  MFU  model FLOP utilisation: the plain step's model FLOPs, 3 x the
       forward pass's (forward + backward, the usual convention), over the
       method's step time. It counts only the work of ordinary training, so
       a regularizer that costs twice the plain step shows half its MFU.
  HFU  hardware FLOP utilisation: the FLOPs of the method's own step as XLA
       counts them in the lowered program, over its step time.

FLOPs come from `Lowered.cost_analysis()` (the program before backend
fusion, where convolutions are still convolutions), or from the compiled
program's analysis on backends that analyse only that (GPU).
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
from nme_train.train.dry_run import model_flops as step_model_flops
from nme_train.train.dry_run import program_flops
from nme_train.train.metrics import peak_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/imagenet_resnet50.py")
    parser.add_argument("--batch_size", type=int, default=256, help="per device")
    parser.add_argument("--methods", default="plain,sam,gradient_penalty")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="the device's peak TFLOP/s (default: from the device kind)")
    args = parser.parse_args()
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")

    device = jax.devices()[0]
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device.device_kind)
    runs, model_flops = {}, None
    for name in names:
        config = load_config_file(args.config)
        config.batch_size = args.batch_size
        config.regularizers = METHODS[name]
        program, _, batch, state = one_device_experiment(config)
        if model_flops is None:  # 3 x forward FLOPs of the eval-mode forward pass
            model_flops = step_model_flops(program, state, batch)
        start = time.perf_counter()
        lowered = program.train_step.lower(state, batch)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        for _ in range(2):  # warm-up
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        runs[name] = {"step": compiled, "state": state, "batch": batch, "times": [],
                      "flops": program_flops(lowered, compiled), "compile_s": compile_s}
        print(f"compiled {name} in {compile_s:.1f} s", flush=True)

    time_alternating(runs, args.rounds, args.steps)

    print(f"\n{args.config}, batch {args.batch_size}, device {device.device_kind}, "
          f"peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s, "
          f"model FLOPs/step {model_flops / 1e9:.1f} G")
    print(f"{'method':22s} {'ms/step':>9s} {'images/s':>9s} {'ratio':>6s} {'MFU':>6s} "
          f"{'HFU':>6s}")
    base = statistics.median(runs[names[0]]["times"])
    results = {}
    for name in names:
        med = statistics.median(runs[name]["times"])
        mfu = model_flops / med / peak if peak else None
        hfu = runs[name]["flops"] / med / peak if peak else None
        results[name] = {"ms_per_step": 1e3 * med, "images_per_s": args.batch_size / med,
                         "ratio": med / base, "mfu": mfu, "hfu": hfu,
                         "step_gflops": runs[name]["flops"] / 1e9,
                         "compile_s": runs[name]["compile_s"],
                         "times_ms": [1e3 * t for t in runs[name]["times"]]}
        fmt = (lambda x: f"{100 * x:5.1f}%") if peak else (lambda x: "   n/a")
        print(f"{name:22s} {1e3 * med:9.2f} {args.batch_size / med:9.1f} {med / base:6.2f} "
              f"{fmt(mfu)} {fmt(hfu)}")
    print(json.dumps({"config": args.config, "batch_size": args.batch_size,
                      "device": device.device_kind, "peak_tflops": peak and peak / 1e12,
                      "model_gflops_per_step": model_flops / 1e9, "methods": results}))


if __name__ == "__main__":
    main()
