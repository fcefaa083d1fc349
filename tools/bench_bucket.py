"""What a job writes to a bucket workdir, and what that costs it, against a local workdir.

    python tools/bench_bucket.py [--steps 440] [--probe_every 200] [--out FILE.json]

Starts the local GCS emulator (tests/support/gcs_emulator.py; the dev extra), then runs the
default job (configs/default.py, with probes every `--probe_every` steps) twice, as
`python -m nme_train.main`: once with a local workdir, once with `gs://bench/run`.
From the emulator's request log it counts the requests and bytes of the bucket run by
what they touch (checkpoints, metrics, probes, TensorBoard events, markers and lock,
the start-up check), per 100 training steps; from the two runs' metrics it compares
the training throughput of the log intervals with and without a checkpoint save.
The emulator answers on the loopback address, so the times are a lower bound of a
real bucket's (its latency is milliseconds, not microseconds); the counts and bytes
are what a bucket would receive.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import unquote

from nme_train.cli import CHECKOUT, checkout_module

CATEGORIES = (("checkpoints", "/checkpoints/"), ("metrics", "metrics.jsonl"),
              ("probes", "probes"), ("tensorboard", "/tensorboard/"),
              ("markers and lock", ("config.json", "final.json", "writer.lock")),
              ("start-up check", ".write_test"))


def category(path: str) -> str:
    path = unquote(path)
    for name, keys in CATEGORIES:
        if any(key in path for key in ((keys,) if isinstance(keys, str) else keys)):
            return name
    return "other (listings, bucket)"


def run_job(workdir: str, steps: int, probe_every: int, env: dict) -> float:
    command = [sys.executable, "-m", "nme_train.main", "--config=configs/default.py",
               f"--workdir={workdir}", f"--config.num_train_steps={steps}",
               "--config.num_epochs=-1", f"--config.probes.every_steps={probe_every}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=CHECKOUT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench_bucket: the job in {workdir} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def throughput(workdir: str, every: int, log_every: int) -> dict[str, float]:
    """Median steps/s of the log intervals that contain a checkpoint save and of the rest
    (the first interval, which compiles, is left out)."""
    from nme_train.train.metrics import read_metrics

    saving, plain = [], []
    for record in read_metrics(workdir):
        if "train/steps_per_sec" not in record:
            continue
        step = record["step"]
        saved = any(s % every == 0 for s in range(step - log_every + 1, step + 1))
        (saving if saved else plain).append(record["train/steps_per_sec"])
    return {"steps_per_sec_with_save": statistics.median(saving) if saving else float("nan"),
            "steps_per_sec_without_save": statistics.median(plain) if plain else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=440)
    parser.add_argument("--probe_every", type=int, default=200)
    parser.add_argument("--out", default="", help="also write the figures as JSON here")
    args = parser.parse_args()

    from nme_train.cli import load_config_file
    Emulator = checkout_module("tests/support/gcs_emulator.py").Emulator

    config = load_config_file(os.path.join(CHECKOUT, "configs", "default.py"))
    every, log_every = config.checkpoint.every_steps, config.log_every_steps
    emulator = Emulator("nme-bench").start()
    os.environ.update(emulator.env)  # this process reads the bucket run's metrics too
    env = dict(os.environ)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "run")
            local_s = run_job(local, args.steps, args.probe_every, env)
            before = len(emulator.requests)
            remote = emulator.path("run")
            remote_s = run_job(remote, args.steps, args.probe_every, env)
            requests = emulator.requests[before:]
            speeds = {"local": throughput(local, every, log_every),
                      "bucket": throughput(remote, every, log_every)}
    finally:
        emulator.stop()
    per = 100.0 / args.steps
    table = {}
    for method, path, received, sent, _ in requests:
        row = table.setdefault(category(path), {"requests": 0, "bytes_written": 0,
                                                "bytes_read": 0})
        row["requests"] += 1
        row["bytes_written" if method in ("POST", "PUT", "PATCH") else "bytes_read"] += (
            received if method in ("POST", "PUT", "PATCH") else sent)
    result = {
        "job": f"configs/default.py, {args.steps} steps, checkpoint every {every}, log every "
               f"{log_every}, probes every {args.probe_every}",
        "per_100_steps": {name: {k: round(v * per, 1) for k, v in row.items()}
                          for name, row in sorted(table.items())},
        "total_per_100_steps": {k: round(sum(r[k] for r in table.values()) * per, 1)
                                for k in ("requests", "bytes_written", "bytes_read")},
        "wall_s": {"local": round(local_s, 1), "bucket": round(remote_s, 1)},
        "throughput": speeds,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
