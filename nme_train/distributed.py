"""Joining a multi-process job: find the job's layout and call `jax.distributed.initialize`.

`initialize()` is the first thing `nme_train.main` does. It looks for the
job's layout in this order, and uses the first it finds:

  explicit    NME_COORDINATOR (host:port), NME_NUM_PROCESSES, NME_PROCESS_ID
              (or the same as arguments / main's flags). launch/local.py sets
              them; so do the Kubernetes manifests, from the pod's index.
  kubernetes  an indexed Job or JobSet pod (JOB_COMPLETION_INDEX) with
              NME_COORDINATOR and NME_NUM_PROCESSES set: the index is the
              process id.
  slurm       a task of `srun` (SLURM_PROCID, SLURM_NTASKS > 1): the
              coordinator is the first node of SLURM_JOB_NODELIST, on port
              NME_COORDINATOR_PORT (default 29500).
  tpu         a Cloud TPU VM slice with several workers (TPU_WORKER_HOSTNAMES
              lists more than one): JAX's own TPU cluster detection.
  single      none of these: one process, nothing to join.

Every multi-process start bounds its waits: `initialization_timeout`
(NME_INIT_TIMEOUT, default 300 s) for all processes to connect, and a
heartbeat (NME_HEARTBEAT_TIMEOUT, default 100 s) after which the
coordination service declares a silent process dead and the others fail
with an error instead of hanging. On CPU the cross-process collectives use
gloo. Process 0 prints the layout once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess

from absl import logging

DEFAULT_PORT = 29500


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where this process sits in the job."""

    source: str  # explicit | kubernetes | slurm | tpu | single
    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: tuple[int, ...] | None = None


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list ("gpu[01-03,7],cpu5") as host names.

    `scontrol show hostnames` does this where SLURM is installed; this
    parser covers the bracket forms SLURM writes, for hosts without scontrol.
    """
    hosts = []
    parts = re.findall(r"[^,\[]+(?:\[[^\]]*\])?", nodelist)
    for part in parts:
        part = part.strip(",")
        match = re.fullmatch(r"(.*)\[(.*)\]", part)
        if not match:
            hosts.append(part)
            continue
        prefix, ranges = match.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            if hi:
                hosts += [f"{prefix}{n:0{len(lo)}d}" for n in range(int(lo), int(hi) + 1)]
            else:
                hosts.append(prefix + lo)
    return hosts


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_nodelist(nodelist)[0]


def _int(env: dict, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r} must be an integer") from None


def detect(env: dict | None = None, coordinator: str | None = None,
           num_processes: int | None = None, process_id: int | None = None) -> Layout:
    """The job layout from arguments and environment variables (see the module doc)."""
    env = dict(os.environ if env is None else env)
    coordinator = coordinator or env.get("NME_COORDINATOR")
    if num_processes is None and "NME_NUM_PROCESSES" in env:
        num_processes = _int(env, "NME_NUM_PROCESSES")
    if process_id is None and "NME_PROCESS_ID" in env:
        process_id = _int(env, "NME_PROCESS_ID")
    if coordinator or num_processes or process_id is not None:
        source = "explicit"
        if process_id is None and "JOB_COMPLETION_INDEX" in env:
            process_id, source = _int(env, "JOB_COMPLETION_INDEX"), "kubernetes"
        missing = [name for name, value in (("NME_COORDINATOR", coordinator),
                                            ("NME_NUM_PROCESSES", num_processes),
                                            ("NME_PROCESS_ID", process_id)) if value is None]
        if missing:
            raise ValueError(f"a multi-process job needs NME_COORDINATOR, NME_NUM_PROCESSES and "
                             f"NME_PROCESS_ID (or the flags); missing {missing}")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"NME_PROCESS_ID={process_id} must be in [0, {num_processes})")
        if ":" not in coordinator:
            coordinator = f"{coordinator}:{env.get('NME_COORDINATOR_PORT', DEFAULT_PORT)}"
        return Layout(source, coordinator, num_processes, process_id)
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        host = _first_slurm_host(env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"])
        port = env.get("NME_COORDINATOR_PORT", DEFAULT_PORT)
        local = None
        if env.get("NME_ONE_TASK_PER_DEVICE", "0") == "1":  # srun --ntasks-per-gpu=1
            local = (_int(env, "SLURM_LOCALID"),)
        return Layout("slurm", f"{host}:{port}", _int(env, "SLURM_NTASKS"),
                      _int(env, "SLURM_PROCID"), local)
    workers = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(workers) > 1:
        return Layout("tpu", None, len(workers), _int(env, "TPU_WORKER_ID")
                      if "TPU_WORKER_ID" in env else 0)
    return Layout("single")


_INITIALIZED: Layout | None = None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, env: dict | None = None) -> Layout:
    """Joins the job described by the arguments or the environment (idempotent)."""
    global _INITIALIZED
    if _INITIALIZED is not None:
        return _INITIALIZED
    import jax

    env = dict(os.environ if env is None else env)
    layout = detect(env, coordinator, num_processes, process_id)
    if layout.source != "single":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        timeouts = {"initialization_timeout": int(env.get("NME_INIT_TIMEOUT", 300)),
                    "heartbeat_timeout_seconds": int(env.get("NME_HEARTBEAT_TIMEOUT", 100))}
        if layout.source == "tpu":
            jax.distributed.initialize(**timeouts)
        else:
            jax.distributed.initialize(coordinator_address=layout.coordinator,
                                       num_processes=layout.num_processes,
                                       process_id=layout.process_id,
                                       local_device_ids=layout.local_device_ids, **timeouts)
    _INITIALIZED = layout
    if jax.process_index() == 0:
        devices = jax.devices()
        logging.info("%s", f"nme_train.distributed: {layout.source}; process "
                     f"{jax.process_index()} of {jax.process_count()}; "
                     f"{jax.local_device_count()} local and {len(devices)} global "
                     f"{devices[0].platform} device(s)"
                     + (f"; coordinator {layout.coordinator}" if layout.coordinator else ""))
    return layout
