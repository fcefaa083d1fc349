#!/usr/bin/env python3
"""Test support: a stand-in for `gcloud compute tpus tpu-vm` over simulated TPU VM workers.

Each worker is a directory (its home) under $FAKE_GCLOUD_ROOT/<name>/worker<i>, with a
machine environment of its own ($FAKE_GCLOUD_MACHINES at `create`: a JSON list of
variables per worker, e.g. the address of that worker's metadata server). It does what
gcloud's reference documents for the commands launch/tpu_vm.sh uses
(cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm), and what ssh does:

  create NAME --zone --accelerator-type T --version V [--spot]   a slice of T's hosts
      (v2/v3/v4: 8 cores per host, so v4-16 has 2), state READY; ALREADY_EXISTS (exit 1)
      if NAME exists
  describe NAME --zone [--format=value(state)]   its state; NOT_FOUND (exit 1) if absent
  delete NAME --zone --quiet                      removes it, its disks with it
  scp SRC NAME:DEST --zone --worker=all|I         copies a file into the workers' homes
  ssh NAME --zone --worker=all|I --command=CMD    runs CMD with bash on each worker, in
      its home, in a new session, with the worker's environment only: ssh passes none of
      the caller's variables (a login's HOME, USER, PATH, and the machine's own). Like
      ssh it returns once CMD has exited and every process holding the session's output
      has closed it (a job started with `&` but still writing there keeps it open).
      $FAKE_GCLOUD_SSH_TIMEOUT=S models a dropped connection after S seconds: sshd hangs
      up the session (SIGHUP to its processes) and gcloud exits 255.

A worker's PATH starts with $FAKE_GCLOUD_ROOT/bin: the tests put stand-ins for what a
TPU VM image holds there (its system python3, uv, curl).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.environ.get("FAKE_GCLOUD_ROOT", "/tmp/fake_gcloud")


def fail(message: str, code: int = 1) -> None:
    print(f"ERROR: (gcloud.compute.tpus.tpu-vm) {message}", file=sys.stderr)
    sys.exit(code)


def options(args: list[str]) -> tuple[list[str], dict[str, str]]:
    positional, named = [], {}
    for arg in args:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            named[key] = value
        else:
            positional.append(arg)
    return positional, named


def slice_dir(name: str) -> str:
    return os.path.join(ROOT, name)


def workers(name: str, which: str) -> list[int]:
    count = len(json.load(open(os.path.join(slice_dir(name), "machines.json"))))
    return list(range(count)) if which == "all" else [int(which)]


def hosts_of(accelerator: str) -> int:
    match = re.fullmatch(r"v[234]-(\d+)", accelerator)
    if not match:
        fail(f"INVALID_ARGUMENT: accelerator type {accelerator!r} not simulated here")
    return max(1, int(match.group(1)) // 8)


def create(name: str, opts: dict) -> None:
    if os.path.exists(slice_dir(name)):
        fail(f"ALREADY_EXISTS: node {name} already exists")
    hosts = hosts_of(opts["accelerator-type"])
    machines = json.loads(os.environ.get("FAKE_GCLOUD_MACHINES", "[]")) or [{}] * hosts
    if len(machines) != hosts:
        fail(f"test setup: {hosts} hosts for {opts['accelerator-type']}, "
             f"{len(machines)} machine environments")
    for i in range(hosts):
        os.makedirs(os.path.join(slice_dir(name), f"worker{i}"))
    json.dump(machines, open(os.path.join(slice_dir(name), "machines.json"), "w"))
    open(os.path.join(slice_dir(name), "state"), "w").write("READY")
    json.dump({"spot": "spot" in opts, "version": opts.get("version")},
              open(os.path.join(slice_dir(name), "node.json"), "w"))


def ssh(name: str, opts: dict) -> int:
    timeout = float(os.environ.get("FAKE_GCLOUD_SSH_TIMEOUT", "0")) or None
    machines = json.load(open(os.path.join(slice_dir(name), "machines.json")))
    procs = []
    for i in workers(name, opts.get("worker", "0")):
        home = os.path.join(slice_dir(name), f"worker{i}")
        env = {"HOME": home, "USER": "tpu", "LOGNAME": "tpu", "SHELL": "/bin/bash",
               "PATH": f"{ROOT}/bin:/usr/local/bin:/usr/bin:/bin", **machines[i]}
        procs.append((i, subprocess.Popen(["bash", "-c", opts["command"]], cwd=home, env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, start_new_session=True)))

    def relay(i, proc):
        for line in proc.stdout:  # until every holder of the session's output closes it
            sys.stdout.write(f"worker {i}: {line.decode(errors='replace')}")
            sys.stdout.flush()

    threads = [threading.Thread(target=relay, args=p, daemon=True) for p in procs]
    for t in threads:
        t.start()
    deadline = time.time() + timeout if timeout else None
    for t in threads:
        t.join(None if deadline is None else max(0.0, deadline - time.time()))
    if any(t.is_alive() for t in threads):  # the session still open at the deadline
        for _, proc in procs:  # the connection dropped: sshd hangs up the session
            try:
                os.killpg(proc.pid, signal.SIGHUP)
            except ProcessLookupError:
                pass
        print("Connection closed by remote host.", file=sys.stderr)
        return 255
    return max(p.wait() for _, p in procs)


def main(argv: list[str]) -> int:
    if argv[:3] != ["compute", "tpus", "tpu-vm"]:
        fail(f"not simulated: gcloud {' '.join(argv)}")
    command, (positional, opts) = argv[3], options(argv[4:])
    name = positional[0].split(":")[0] if command != "scp" else positional[1].split(":")[0]
    if command == "create":
        create(name, opts)
        return 0
    if not os.path.exists(slice_dir(name)):
        fail(f"NOT_FOUND: node {name} not found")
    if command == "describe":
        state = open(os.path.join(slice_dir(name), "state")).read()
        print(state if opts.get("format") == "value(state)" else f"state: {state}")
        return 0
    if command == "delete":
        shutil.rmtree(slice_dir(name))
        return 0
    if command == "scp":
        source, destination = positional[0], positional[1].split(":", 1)[1]
        for i in workers(name, opts.get("worker", "0")):
            shutil.copy(source, os.path.join(slice_dir(name), f"worker{i}", destination))
        return 0
    if command == "ssh":
        return ssh(name, opts)
    fail(f"not simulated: gcloud compute tpus tpu-vm {command}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
