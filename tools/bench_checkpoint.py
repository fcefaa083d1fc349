"""What a checkpoint save costs the training loop.

    python tools/bench_checkpoint.py [--config configs/default.py] [--steps 600] [--every 25]

Runs the framework's train step on a synthetic batch and saves a checkpoint
every `--every` steps into a temporary directory, timing each iteration
(step + save, waited for on the device). Reports the median time of a
normal step, of a step that saves, and of the steps right after a save
(when the background write is running), as ratios to a normal step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax

from nme_train.cli import load_config_file
from nme_train.train.benchmark import one_device_experiment
from nme_train.train.checkpoint import Checkpointer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=25)
    args = parser.parse_args()

    config = load_config_file(args.config)
    program, _, batch, state = one_device_experiment(config)
    for _ in range(3):  # compile and warm up
        state, metrics = program.train_step(state, batch)
    jax.block_until_ready(state)

    normal, saving, after, later = [], [], [], []
    with tempfile.TemporaryDirectory() as workdir:
        ckpt = Checkpointer(workdir, max_to_keep=2)
        ckpt.save(0, state, {"step": 0})  # first save pays one-time setup: not counted
        ckpt.wait()
        for step in range(1, args.steps + 1):
            start = time.perf_counter()
            state, metrics = program.train_step(state, batch)
            if step % args.every == 0:
                ckpt.save(step, state, {"step": step, "metrics": {}})
            jax.block_until_ready(state)
            elapsed = time.perf_counter() - start
            if step % args.every == 0:
                saving.append(elapsed)
            elif step % args.every <= 3:
                after.append(elapsed)
            elif step % args.every <= 10:
                later.append(elapsed)
            else:
                normal.append(elapsed)
        ckpt.close()
    med = {name: statistics.median(v) for name, v in
           (("normal", normal), ("saving", saving), ("after_save", after),
            ("4_10_after", later))}
    print(f"model {config.model.name} ({program.num_params:,} params), batch {config.batch_size}, "
          f"{args.steps} steps, a save every {args.every}")
    for name, value in med.items():
        print(f"  {name:11s} median {1e3 * value:8.3f} ms   ratio to a normal step "
              f"{value / med['normal']:.2f}")
    print(json.dumps({"config": args.config, **{f"{k}_ms": 1e3 * v for k, v in med.items()},
                      "save_step_ratio": med["saving"] / med["normal"],
                      "after_save_ratio": med["after_save"] / med["normal"],
                      "4_10_after_ratio": med["4_10_after"] / med["normal"]}))


if __name__ == "__main__":
    main()
