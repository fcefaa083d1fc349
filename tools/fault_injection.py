"""Kill the default job at random moments, damage its checkpoints, resume, and compare.

    python tools/fault_injection.py --trials 20 --out docs/measurements/fault_injection.jsonl

One reference run trains the job uninterrupted. Each trial then starts the
same job in a fresh workdir and SIGKILLs it, one to three times, each at a
random moment: either after a random delay, or as soon as orbax starts
writing a checkpoint (a `*.orbax-checkpoint-tmp*` directory appears). After
some kills the newest complete checkpoint is damaged on purpose (its array
files truncated, or the whole directory deleted). After each kill the same
command is run again, and a trial ends when the run has finished. Per trial
it records the kill times and kinds, whether every restart succeeded with
the unchanged command (no manual step), whether a kill ever removed a
checkpoint that was complete before it (a lost finished checkpoint, damage
done on purpose excepted), and whether the final parameters equal the
reference bit for bit. Every random choice comes from --seed and is logged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from nme_train.cli import CHECKOUT

ROOT = CHECKOUT


def complete_steps(workdir: str) -> list[int]:
    from nme_train.train.checkpoint import checkpoint_dir, saved_steps

    return saved_steps(checkpoint_dir(workdir))


def saving_dirs(workdir: str) -> set[str]:
    """orbax's temporary directories: a save in progress (or one killed earlier)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return set()
    return {n for n in os.listdir(directory) if "orbax-checkpoint-tmp" in n}


def logged_step(workdir: str) -> int:
    """The last step in DIR/metrics.jsonl (every log_every_steps steps)."""
    from nme_train.train.metrics import read_metrics

    try:
        return max((r["step"] for r in read_metrics(workdir)), default=0)
    except (ValueError, KeyError):  # a line being written
        return 0


def final_params(workdir: str) -> list[np.ndarray]:
    import jax

    from nme_train.train.checkpoint import load_checkpoint

    state, meta = load_checkpoint(workdir)
    return meta["step"], [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def start(command: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def damage(workdir: str, step: int, how: str) -> None:
    from nme_train.train.checkpoint import checkpoint_dir, state_path

    path = os.path.join(checkpoint_dir(workdir), str(step))
    if how == "delete":
        shutil.rmtree(path)
        return
    for d, _, names in os.walk(state_path(path)):
        for name in names:
            if f"{os.sep}d" in d:
                open(os.path.join(d, name), "wb").close()


def trial(index: int, rng: random.Random, command: list[str], workdir: str,
          max_delay: float, total_steps: int) -> dict:
    record = {"trial": index, "kills": [], "restarts": 0, "manual_steps": 0,
              "lost_checkpoints": []}
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    log = open(os.path.join(workdir, "..", f"trial{index}.log"), "w")
    kills = rng.randint(1, 3)
    proc = start(command + [f"--workdir={workdir}"], log)
    while True:
        if len(record["kills"]) < kills:
            kind = rng.choice(["delay", "after_step", "while_saving"])
            delay = rng.uniform(1.0, max_delay)  # start-up and compilation included
            target, extra = rng.randint(1, total_steps), rng.uniform(0.0, 1.0)
            old_tmp = saving_dirs(workdir)
            began = time.monotonic()
            reached = None
            while proc.poll() is None:
                now = time.monotonic()
                if kind == "delay" and now - began >= delay:
                    break
                if kind == "while_saving" and saving_dirs(workdir) - old_tmp:
                    break
                if kind == "after_step":
                    if reached is None and logged_step(workdir) >= target:
                        reached = now
                    if reached is not None and now - reached >= extra:
                        break
                if now - began > 4 * max_delay:
                    break
                time.sleep(0.005)
            if proc.poll() is not None:
                record["kills"].append({"kind": kind, "finished_first": True})
                kills = len(record["kills"])  # the run ended before this kill: no more
                continue
            if proc.poll() is None:
                before = complete_steps(workdir)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                after = complete_steps(workdir)
                lost = [s for s in before if s not in after and not any(a > s for a in after)]
                record["lost_checkpoints"] += lost
                kill = {"kind": kind, "after_s": round(time.monotonic() - began, 2),
                        "target_step": target if kind == "after_step" else None,
                        "complete_before": before, "complete_after": after}
                finished = os.path.exists(os.path.join(workdir, "final.json"))
                kill["after_final_json"] = finished  # killed while exiting a finished run
                if after and not finished and rng.random() < 0.4:  # damage the newest one
                    kill["damaged"] = (after[-1], rng.choice(["truncate", "delete"]))
                    damage(workdir, *kill["damaged"])
                record["kills"].append(kill)
                proc = start(command + [f"--workdir={workdir}"], log)
                record["restarts"] += 1
                continue
        proc.wait()
        if proc.returncode == 0:
            break
        record["manual_steps"] += 1  # the unchanged command failed: a person would step in
        record["failed_exit"] = proc.returncode
        break
    log.close()
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--max_delay", type=float, default=15.0,
                        help="longest random delay before a kill, seconds")
    parser.add_argument("--scratch", default="/tmp/nme_fault_injection")
    parser.add_argument("--out", default="docs/measurements/fault_injection.jsonl")
    args = parser.parse_args()
    command = [sys.executable, "-m", "nme_train.main", f"--config={args.config}"]
    rng = random.Random(args.seed)
    os.makedirs(args.scratch, exist_ok=True)
    reference = os.path.join(args.scratch, "reference")
    if not os.path.exists(os.path.join(reference, "final.json")):
        shutil.rmtree(reference, ignore_errors=True)
        subprocess.run(command + [f"--workdir={reference}"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    ref_step, ref = final_params(reference)
    records = []
    for i in range(args.trials):
        workdir = os.path.join(args.scratch, f"trial{i}")
        record = trial(i, rng, command, workdir, args.max_delay, ref_step)
        if record["manual_steps"] == 0:
            try:
                step, params = final_params(workdir)
            except Exception as e:  # noqa: BLE001 - recorded: the final checkpoint is unusable
                record["final_checkpoint_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                record["manual_steps"] += 1
                records.append(record)
                print(json.dumps(record), flush=True)
                continue
            record["final_step"] = step
            record["equal_to_reference"] = step == ref_step and all(
                np.array_equal(a, b) for a, b in zip(params, ref))
        records.append(record)
        print(json.dumps(record), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    kills = [k for r in records for k in r["kills"] if not k.get("finished_first")]
    summary = {
        "trials": len(records), "kills": len(kills),
        "kills_while_saving": sum(k["kind"] == "while_saving" for k in kills),
        "damaged_after_kill": sum("damaged" in k for k in kills),
        "finished_equal_to_reference": sum(bool(r.get("equal_to_reference")) for r in records),
        "needed_a_manual_step": sum(r["manual_steps"] > 0 for r in records),
        "lost_a_finished_checkpoint": sum(bool(r["lost_checkpoints"]) for r in records),
    }
    print("summary: " + json.dumps(summary), flush=True)
    return 0 if summary["needed_a_manual_step"] == 0 and not summary[
        "lost_a_finished_checkpoint"] else 1


if __name__ == "__main__":
    sys.exit(main())
