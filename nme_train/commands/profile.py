"""Ask a running job for a profiler trace of its next steps, without restarting it.

    nme-profile --workdir DIR                # the next 5 steps
    nme-profile --workdir DIR --steps 20 --wait 600

(`python -m nme_train.commands.profile` is the same.) Writes DIR/profile_request.json;
the job reads it at a step boundary (within config.profile.poll_seconds), traces the next
steps into DIR/tensorboard/plugins/profile/ (TensorBoard's Profile tab) and records them
in DIR/profiles.jsonl. With --wait, waits for that record and prints it (exit 1 when none
came). nme_train.train.profiling; docs/benchmarks.md, "Where the time goes".
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from nme_train import storage
from nme_train.train import rundir
from nme_train.train.profiling import read_profiles, request_profile


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="the running job's workdir")
    parser.add_argument("--steps", type=int, default=5, help="steps to trace")
    parser.add_argument("--wait", type=float, default=0.0,
                        help="seconds to wait for the trace's record (0: do not wait)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        print(f"profile: error: --steps={args.steps}: give the number of steps to trace "
              "(an integer >= 1)", file=sys.stderr)
        return 2
    try:
        storage.check_reachable(args.workdir, "--workdir")
        if not storage.exists(storage.join(args.workdir, rundir.CONFIG_FILE)):
            raise ValueError(f"--workdir={args.workdir}: no job has started there (no "
                             f"{rundir.CONFIG_FILE}); give the running job's --workdir")
        before = len(read_profiles(args.workdir))
        path = request_profile(args.workdir, args.steps)
    except (storage.StorageError, ValueError) as e:
        print(f"profile: error: {e}", file=sys.stderr)
        return 2
    print(f"profile: asked for {args.steps} step(s): {path}", flush=True)
    deadline = time.monotonic() + args.wait
    while args.wait and time.monotonic() < deadline:
        records = read_profiles(args.workdir)
        if len(records) > before:
            print(json.dumps(records[-1]))
            return 0
        time.sleep(0.5)
    if args.wait:
        print(f"profile: no trace recorded within {args.wait:g} s (is the job running?)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
