"""Joining a multi-process job: find the job's layout and call `jax.distributed.initialize`.

`initialize()` is the first thing `nme_train.main` does. It looks for the
job's layout in this order, and uses the first it finds (docs/scale.md has
the table: environment, what is read, what is done, how it is tested):

  explicit    NME_COORDINATOR (host:port), NME_NUM_PROCESSES, NME_PROCESS_ID
              (or the same as arguments / main's flags). launch/local.py sets
              them; so do the Kubernetes manifests, from the pod's index.
  kubernetes  an indexed Job or JobSet pod (JOB_COMPLETION_INDEX) with
              NME_COORDINATOR and NME_NUM_PROCESSES set: the index is the
              process id.
  slurm       a task of a job step started by `srun` (SLURM_STEP_NODELIST,
              SLURM_PROCID, SLURM_NTASKS > 1, as JAX's own SLURM detection
              reads them): the coordinator is the first node of the step, on
              port NME_COORDINATOR_PORT or, as JAX does, one derived from the
              job id (61440 + id mod 4096: two jobs sharing a first node do not
              collide). The batch shell of `sbatch` carries SLURM_PROCID and
              SLURM_NTASKS too, but no step variables: a trainer started there
              without srun runs as one process.
  tpu         a Cloud TPU VM slice of several hosts: GKE's pods carry
              TPU_WORKER_HOSTNAMES and TPU_WORKER_ID; a VM made with `gcloud
              compute tpus tpu-vm create` has neither, and its layout is read
              from the GCE metadata server (attributes agent-worker-number and
              worker-network-endpoints), where JAX's TPU cluster detection
              reads it, on a host whose PCI bus shows TPU chips. The
              coordinator is the first worker, on JAX's port 8482.
  single      none of these: one process, nothing to join.

Every multi-process start bounds its waits: `initialization_timeout`
(NME_INIT_TIMEOUT, default 300 s) for all processes to connect, and a
heartbeat (NME_HEARTBEAT_TIMEOUT, default 100 s, where the installed jax
takes it) after which the coordination service declares a silent process
dead and the others fail with an error instead of hanging. On CPU the
cross-process collectives use gloo. Process 0 prints the layout once.
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import os
import re
import subprocess
import urllib.error
import urllib.request

from absl import logging

DEFAULT_PORT = 29500  # explicit layouts without a port (the Kubernetes manifests)
TPU_PORT = 8482  # JAX's coordinator port on Cloud TPU (jax._src.clusters.cloud_tpu_cluster)
# Google's PCI vendor id, as the TPU chips show on a TPU VM's PCI bus
TPU_PCI_VENDOR = "0x1ae0"
# The GCE metadata server: the host JAX and Google's client libraries read from
# GCE_METADATA_IP; every request needs the header Metadata-Flavor: Google
# (https://cloud.google.com/compute/docs/metadata/querying-metadata).
METADATA_HOST = "metadata.google.internal"
# TPU chips by PCI device id (Google's vendor id also covers its virtual NIC), as JAX's
# hardware_utils lists them: v2/v3, v4, v5p, v5e, v6e, TPU7x.
TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")


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


def slurm_port(env: dict) -> int:
    """NME_COORDINATOR_PORT, or JAX's port of the job: 61440 + SLURM_JOB_ID mod 4096."""
    if "NME_COORDINATOR_PORT" in env:
        return _int(env, "NME_COORDINATOR_PORT")
    return 65536 - 2**12 + _int(env, "SLURM_JOB_ID") % 2**12


def _visible_devices(env: dict) -> list[str] | None:
    """The accelerators a scheduler bound to this process (CUDA/ROCm visibility), or None."""
    for name in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        if env.get(name):
            return [d for d in env[name].split(",") if d]
    return None


def _one_device_per_task(env: dict) -> tuple[int, ...] | None:
    """local_device_ids of one task per accelerator (NME_ONE_TASK_PER_DEVICE=1).

    When SLURM binds one GPU to each task (`--ntasks-per-gpu=1`, `--gpus-per-task=1`,
    `--gpu-bind`), the task sees that GPU alone, as its device 0: every visible device is
    the task's (None). When every task sees all of the node's GPUs, task SLURM_LOCALID
    takes the one of that index among them.
    """
    visible = _visible_devices(env)
    if visible is not None and len(visible) == 1:
        return None
    local = _int(env, "SLURM_LOCALID")
    return (local % len(visible),) if visible else (local,)


def _slurm_layout(env: dict) -> Layout | None:
    """A task of an srun step with several tasks; None elsewhere (the batch shell too)."""
    step = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
            "SLURM_LOCALID")
    if not all(name in env for name in step) or _int(env, "SLURM_NTASKS") < 2:
        return None
    host = _first_slurm_host(env["SLURM_STEP_NODELIST"])
    local = (_one_device_per_task(env) if env.get("NME_ONE_TASK_PER_DEVICE", "0") == "1"
             else None)
    return Layout("slurm", f"{host}:{slurm_port(env)}", _int(env, "SLURM_NTASKS"),
                  _int(env, "SLURM_PROCID"), local)


def tpu_chips(env: dict) -> int:
    """TPU chips on this host's PCI bus (NME_PCI_DEVICES: another sysfs root, for tests)."""
    root = env.get("NME_PCI_DEVICES", "/sys/bus/pci/devices")
    count = 0
    for vendor in glob.glob(os.path.join(root, "*", "vendor")):
        try:
            with open(vendor) as f:
                if f.read().strip() != TPU_PCI_VENDOR:
                    continue
            with open(os.path.join(os.path.dirname(vendor), "device")) as f:
                count += f.read().strip() in TPU_PCI_DEVICES
        except OSError:
            continue
    return count


def metadata(key: str, env: dict, timeout: float = 10.0) -> str | None:
    """An instance attribute from the GCE metadata server, or None when it has none."""
    host = env.get("GCE_METADATA_IP", METADATA_HOST)
    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/instance/attributes/{key}",
        headers={"Metadata-Flavor": "Google"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.read().decode("utf-8").strip()
    except (urllib.error.URLError, OSError):
        return None


def _tpu_layout(env: dict) -> Layout | None:
    """A Cloud TPU slice of several hosts: GKE's variables, else the metadata server."""
    port = _int(env, "NME_COORDINATOR_PORT") if "NME_COORDINATOR_PORT" in env else TPU_PORT
    workers = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if workers:
        worker = _int(env, "TPU_WORKER_ID") if "TPU_WORKER_ID" in env else 0
    elif tpu_chips(env):
        endpoints = metadata("worker-network-endpoints", env)
        number = metadata("agent-worker-number", env)
        if endpoints is None or number is None:
            return None
        # "host,host,..." or "name:id:ip,..." (both forms occur; JAX reads both)
        workers = [e.split(":")[-1] for e in endpoints.split(",") if e]
        try:
            worker = int(number)
        except ValueError:
            raise ValueError(f"metadata agent-worker-number={number!r} must be an "
                             "integer") from None
    if len(workers) < 2:
        return None
    return Layout("tpu", f"{workers[0]}:{port}", len(workers), worker)


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
    return _slurm_layout(env) or _tpu_layout(env) or Layout("single")


def _supported(function, kwargs: dict) -> tuple[dict, list[str]]:
    """The keyword arguments `function` takes, and the names of those it does not."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs, []
    return ({k: v for k, v in kwargs.items() if k in parameters},
            [k for k in kwargs if k not in parameters])


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
    dropped: list[str] = []
    if layout.source != "single":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # heartbeat_timeout_seconds came with jax 0.7: older versions keep their default
        kwargs, dropped = _supported(jax.distributed.initialize, {
            "initialization_timeout": int(env.get("NME_INIT_TIMEOUT", 300)),
            "heartbeat_timeout_seconds": int(env.get("NME_HEARTBEAT_TIMEOUT", 100))})
        jax.distributed.initialize(coordinator_address=layout.coordinator,
                                   num_processes=layout.num_processes,
                                   process_id=layout.process_id,
                                   local_device_ids=layout.local_device_ids, **kwargs)
    _INITIALIZED = layout
    if jax.process_index() == 0:
        devices = jax.devices()
        logging.info("%s", f"nme_train.distributed: {layout.source}; process "
                     f"{jax.process_index()} of {jax.process_count()}; "
                     f"{jax.local_device_count()} local and {len(devices)} global "
                     f"{devices[0].platform} device(s)"
                     + (f"; coordinator {layout.coordinator}" if layout.coordinator else ""))
        if dropped:
            logging.warning("%s", f"nme_train.distributed: jax {jax.__version__} takes no "
                            f"{', '.join(dropped)}: its default applies")
    return layout
