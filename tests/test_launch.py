"""Multi-process launch: layout detection, the local launcher, SLURM with a faked cluster,
and static checks of the SLURM, TPU VM and Kubernetes files."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from conftest import ROOT, free_port, xla_flags

from nme_train import distributed as dist
from nme_train.train.checkpoint import saved_steps
from nme_train.train.metrics import read_metrics
from nme_train.train.rundir import read_final

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
LAUNCH = os.path.join(ROOT, "launch")


# -- layout detection ---------------------------------------------------------
SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8", "SLURM_PROCID": "5",
              "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-10]",
              "SLURM_STEP_NODELIST": "gpu[08-10]", "PATH": "/nonexistent"}  # no scontrol


def test_layouts_from_each_environment():
    assert dist.detect({}) == dist.Layout("single")
    assert dist.detect({"NME_COORDINATOR": "10.0.0.1:1234", "NME_NUM_PROCESSES": "4",
                        "NME_PROCESS_ID": "3"}) == dist.Layout("explicit", "10.0.0.1:1234", 4, 3)
    assert dist.detect({"NME_COORDINATOR": "head", "NME_NUM_PROCESSES": "2",
                        "JOB_COMPLETION_INDEX": "1"}) == dist.Layout("kubernetes", "head:29500",
                                                                     2, 1)
    # an srun task: the first node of its step, a port from the job id as JAX derives it
    # (61440 + 4242 mod 4096), unless NME_COORDINATOR_PORT names one
    assert dist.detect(SLURM_STEP) == dist.Layout("slurm", "gpu08:61586", 8, 5)
    assert dist.detect({**SLURM_STEP, "SLURM_JOB_ID": "4243"}).coordinator == "gpu08:61587"
    assert dist.detect({**SLURM_STEP, "NME_COORDINATOR_PORT": "4000"}).coordinator == \
        "gpu08:4000"
    # the batch shell of sbatch: SLURM_PROCID and SLURM_NTASKS, but no step variables
    batch_shell = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}
    assert dist.detect(batch_shell).source == "single"
    assert dist.detect({**SLURM_STEP, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).source == \
        "single"
    # GKE's TPU pods: the hosts and this host's index; the coordinator on JAX's TPU port
    tpu = {"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3", "TPU_WORKER_ID": "2"}
    assert dist.detect(tpu) == dist.Layout("tpu", "t0:8482", 4, 2)
    assert dist.detect({"TPU_WORKER_HOSTNAMES": "t0"}).source == "single"  # one host
    # explicit values win over the scheduler's
    assert dist.detect({**SLURM_STEP, "NME_COORDINATOR": "a:1", "NME_NUM_PROCESSES": "2",
                        "NME_PROCESS_ID": "0"}).source == "explicit"


def test_one_task_per_gpu_takes_the_gpu_slurm_bound_to_it():
    """NME_ONE_TASK_PER_DEVICE=1: with --gpus-per-task=1 / --ntasks-per-gpu=1 SLURM sets
    CUDA_VISIBLE_DEVICES to the task's one GPU, which is then its device 0 (asking for
    local device SLURM_LOCALID fails with "invalid device ordinal"); when every task sees
    all GPUs, task SLURM_LOCALID takes the one of its index."""
    one = {**SLURM_STEP, "NME_ONE_TASK_PER_DEVICE": "1"}
    assert dist.detect({**one, "CUDA_VISIBLE_DEVICES": "3"}).local_device_ids is None
    assert dist.detect({**one, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}).local_device_ids == (1,)
    assert dist.detect(one).local_device_ids == (1,)
    assert dist.detect(SLURM_STEP).local_device_ids is None  # one task drives all its GPUs


def test_heartbeat_is_passed_only_to_a_jax_that_takes_it(monkeypatch):
    """jax < 0.7 has no heartbeat_timeout_seconds: the start must not fail on it."""
    calls = []

    def old_initialize(coordinator_address=None, num_processes=None, process_id=None,
                       local_device_ids=None, initialization_timeout=300):
        calls.append({"coordinator_address": coordinator_address,
                      "initialization_timeout": initialization_timeout})

    def new_initialize(coordinator_address=None, num_processes=None, process_id=None,
                       local_device_ids=None, initialization_timeout=300,
                       heartbeat_timeout_seconds=100):
        calls.append({"heartbeat_timeout_seconds": heartbeat_timeout_seconds})

    import jax

    env = {"NME_COORDINATOR": "127.0.0.1:1", "NME_NUM_PROCESSES": "2", "NME_PROCESS_ID": "0",
           "NME_HEARTBEAT_TIMEOUT": "33"}
    for fake in (old_initialize, new_initialize):
        monkeypatch.setattr(jax.distributed, "initialize", fake)
        monkeypatch.setattr(dist, "_INITIALIZED", None)
        monkeypatch.setattr(jax.config, "update", lambda *a: None)
        dist.initialize(env=env)
    assert calls == [{"coordinator_address": "127.0.0.1:1", "initialization_timeout": 300},
                     {"heartbeat_timeout_seconds": 33}]


def test_tpu_vm_layout_comes_from_the_metadata_server(tmp_path):
    """A slice made with `gcloud compute tpus tpu-vm create` has no TPU_WORKER_HOSTNAMES: the
    layout is read from the metadata server (stand-in: tests/gce_metadata.py) on a host
    whose PCI bus shows TPU chips; a host without them (a GCE VM whose virtual NIC has
    Google's vendor id) never asks."""
    from tests.gce_metadata import MetadataServer, fake_tpu_pci

    tpu_host = fake_tpu_pci(str(tmp_path / "tpu"), chips=4)
    nic_only = fake_tpu_pci(str(tmp_path / "nic"), chips=0)
    endpoints = "w-0:0:10.0.0.2,w-1:1:10.0.0.3,w-2:2:10.0.0.4,w-3:3:10.0.0.5"
    with MetadataServer({"agent-worker-number": "1",
                         "worker-network-endpoints": endpoints}) as server:
        env = {"GCE_METADATA_IP": server.host, "NME_PCI_DEVICES": tpu_host}
        assert dist.tpu_chips(env) == 4
        assert dist.detect(env) == dist.Layout("tpu", "10.0.0.2:8482", 4, 1)
        assert all(status == 200 for _, status in server.requests)  # the header was sent
        server.attributes["worker-network-endpoints"] = "t1v-w-0,t1v-w-1"  # host names
        assert dist.detect(env) == dist.Layout("tpu", "t1v-w-0:8482", 2, 1)
        asked = len(server.requests)
        assert dist.detect({**env, "NME_PCI_DEVICES": nic_only}).source == "single"
        assert len(server.requests) == asked
    with MetadataServer({"agent-worker-number": "0"}) as server:  # a single-host TPU VM
        assert dist.detect({"GCE_METADATA_IP": server.host,
                            "NME_PCI_DEVICES": tpu_host}).source == "single"


def test_tpu_vm_workers_join_through_the_metadata_server(data_dir, tmp_path):
    """Two processes, each its own TPU VM worker (its own metadata server, TPU chips on
    its PCI bus, no TPU_WORKER_HOSTNAMES), run on the CPU: they find each other and train
    as one job of 2 processes (before, each decided it was alone)."""
    from tests.gce_metadata import MetadataServer, fake_tpu_pci

    pci = fake_tpu_pci(str(tmp_path / "pci"))
    workdir = str(tmp_path / "tpu_vm_job")
    port = free_port()
    endpoints = "w-0:0:127.0.0.1,w-1:1:127.0.0.1"
    servers = [MetadataServer({"agent-worker-number": str(i),
                               "worker-network-endpoints": endpoints}) for i in range(2)]
    procs = []
    try:
        for server in servers:
            server.__enter__()
            env = {**os.environ, "GCE_METADATA_IP": server.host, "NME_PCI_DEVICES": pci,
                   "NME_COORDINATOR_PORT": str(port), "JAX_PLATFORMS": "cpu",
                   "XLA_FLAGS": xla_flags(1)}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "nme_train.main", *trainer_flags(data_dir, workdir, 20)],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for server in servers:
            server.__exit__()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert f"nme_train.distributed: tpu; process 0 of 2; 1 local and 2 global cpu device(s); " \
        f"coordinator 127.0.0.1:{port}" in outs[0][1] + outs[0][0]
    assert final_eval(workdir)["step"] == 20


def test_bad_layouts_name_the_variable():
    with pytest.raises(ValueError, match=r"missing \['NME_PROCESS_ID'\]"):
        dist.detect({"NME_COORDINATOR": "a:1", "NME_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match=r"NME_PROCESS_ID=2 must be in \[0, 2\)"):
        dist.detect({"NME_COORDINATOR": "a:1", "NME_NUM_PROCESSES": "2", "NME_PROCESS_ID": "2"})
    with pytest.raises(ValueError, match="NME_NUM_PROCESSES='two' must be an integer"):
        dist.detect({"NME_COORDINATOR": "a:1", "NME_NUM_PROCESSES": "two",
                     "NME_PROCESS_ID": "0"})


def test_slurm_nodelists_expand():
    assert dist.expand_nodelist("node1") == ["node1"]
    assert dist.expand_nodelist("gpu[01-03,7],cpu5") == ["gpu01", "gpu02", "gpu03", "gpu7",
                                                         "cpu5"]
    assert dist.expand_nodelist("a[9-11]") == ["a9", "a10", "a11"]


# -- the local launcher --------------------------------------------------------
def trainer_flags(data_dir, workdir, steps):
    return ["--config=configs/default.py", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", "--config.num_epochs=-1",
            f"--config.num_train_steps={steps}", "--config.checkpoint.every_steps=10",
            "--config.log_every_steps=5", "--config.eval_every_steps=0",
            "--config.model.features=(8,16)", "--config.model.hidden=(32,)",
            "--config.batch_size=64"]


def launch(processes, devices, flags, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["XLA_FLAGS"] = xla_flags()  # the launcher adds each process's devices
    env["PYTHON"] = sys.executable  # the environment running the tests (CI's is not .venv)
    out = subprocess.run([os.path.join(LAUNCH, "local.sh"), str(processes), str(devices),
                          *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def final_eval(workdir):
    return [r for r in read_metrics(workdir) if "eval/accuracy" in r][-1]


def test_local_launcher_2x4_equals_1x8_and_resumes_on_4x2(data_dir, tmp_path):
    two, one = str(tmp_path / "2x4"), str(tmp_path / "1x8")

    def flags(workdir, steps):  # one checkpoint, at step 30
        return [f.replace("every_steps=10", "every_steps=30")
                for f in trainer_flags(data_dir, workdir, steps)]

    out = launch(2, 4, flags(two, 30))
    assert "explicit; process 0 of 2; 4 local and 8 global cpu device(s)" in out
    assert "mesh {'data': 8, 'fsdp': 1} over 8 cpu device(s)" in out
    launch(1, 8, flags(one, 30))
    # the same global batches on both layouts: same training curve and final accuracy
    train_two = [r for r in read_metrics(two) if "train/loss" in r]
    train_one = [r for r in read_metrics(one) if "train/loss" in r]
    assert [r["step"] for r in train_two] == [5, 10, 15, 20, 25, 30]  # written once
    for a, b in zip(train_two, train_one):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
    assert final_eval(two)["eval/accuracy"] == final_eval(one)["eval/accuracy"]
    assert os.path.isdir(os.path.join(two, "checkpoints", "30"))
    assert sorted(os.listdir(os.path.join(two, "logs"))) == ["process_0.log", "process_1.log"]
    # the 2-process job goes on with 4 processes x 2 devices (and a bucket's 2-process job
    # with 1 process: tests/test_object_storage.py)
    out = launch(4, 2, flags(two, 40) + ["--extend"])
    assert "resumed from the checkpoint at step 30" in out
    assert final_eval(two)["step"] == 40


def launch_two_and_find_process_1(data_dir, workdir, launcher_flags, trainer_extra):
    """A 2-process job, long enough to interrupt: (launcher, process 1) once step 10 is saved."""
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["XLA_FLAGS"] = xla_flags()  # the launcher adds each process's devices
    launcher = subprocess.Popen(
        [sys.executable, os.path.join(LAUNCH, "local.py"), "--processes=2", "--devices=1",
         *launcher_flags, "--", *trainer_flags(data_dir, workdir, 10**6), *trainer_extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "10")):
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()
        time.sleep(0.2)
    victim = next(p for p in psutil.Process(launcher.pid).children()
                  if p.environ().get("NME_PROCESS_ID") == "1")
    return launcher, victim


def test_launcher_fails_fast_when_a_process_dies(data_dir, tmp_path):
    launcher, victim = launch_two_and_find_process_1(data_dir, str(tmp_path / "dies"),
                                                     ["--grace=5"], [])
    victim.kill()
    killed = time.time()
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert time.time() - killed < 60
    assert "process 1 was killed by signal 9; stopping the others" in err
    assert "last lines of process 1's log" in err


@pytest.mark.parametrize("target", ["launcher", "process 1"])
def test_ctrl_c_saves_a_multi_process_job_at_one_step(data_dir, tmp_path, target):
    """Ctrl-C: at the terminal it reaches the launcher alone (its processes run in their own
    sessions), which passes SIGTERM on; sent to one process of the job (an interactive
    srun), the trainer turns it into the SIGTERM that JAX's preemption sync point watches.
    Either way both processes save at one step and exit 75, and so does the launcher."""
    launcher, victim = launch_two_and_find_process_1(data_dir, str(tmp_path / "ctrl_c"), [], [])
    os.kill(launcher.pid if target == "launcher" else victim.pid, signal.SIGINT)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 75, out[-2000:] + err[-2000:]
    assert "stopped at a checkpoint (exit 75); run the same command to resume" in out
    step = int(out.split("preempted by ")[1].split(" at step ")[1].split(";")[0])
    assert saved_steps(str(tmp_path / "ctrl_c" / "checkpoints"))[-1] == step


def test_a_hung_process_fails_the_job_through_the_watchdog(data_dir, tmp_path):
    """SIGSTOP one of 2 processes: the other's watchdog ends it, the launcher fails the job."""
    import psutil

    launcher, victim = launch_two_and_find_process_1(
        data_dir, str(tmp_path / "hangs"), ["--grace=1"], ["--config.watchdog_seconds=5"])
    victim.suspend()  # SIGSTOP: alive, silent
    stopped = time.time()
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 3  # the watchdog's exit code, passed on
    assert time.time() - stopped < 60
    assert "process 0 exited with code 3; stopping the others" in err
    assert "no training step finished for 5 s" in err
    assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE


# -- SLURM: the batch script with stand-ins for srun and scontrol --------------------------
# tests/test_slurm.py runs the script on a real SLURM cluster (with --slurm). These
# stand-ins let the default suite check the script's own logic; they do what SLURM 22.05
# documents and does, not what the script would like:
FAKE_SCONTROL = """#!/usr/bin/env bash
# scontrol(1): `show hostnames LIST` prints one host per line; `requeue JOB` puts a job
# back in the queue (recorded here). Requeueing a running job ends it: slurmstepd sends
# SIGTERM to every process of the batch step, scontrol itself included, and that can land
# before scontrol has read slurmctld's reply (seen on SLURM 22.05: the batch shell's
# trap ran and scontrol exited 143 although the job was requeued). The stand-in takes
# the unlucky order: it signals its process group, then answers.
if [ "$1 $2" = "show hostnames" ]; then echo 127.0.0.1; exit 0; fi
if [ "$1" = "requeue" ]; then
  echo "requeue $2" >> "$FAKE_SLURM_LOG"
  kill -TERM 0
  sleep 0.5
  exit 0
fi
exit 1
"""

FAKE_SRUN = """#!{python}
# srun stand-in. srun(1): it starts SLURM_NTASKS tasks with the step's variables
# (SLURM_STEP_ID, SLURM_STEP_NODELIST, SLURM_STEP_NUM_TASKS, SLURM_PROCID, SLURM_LOCALID:
# "OUTPUT ENVIRONMENT VARIABLES"), --output=PATTERN with %j (job id) and %t (task id),
# --open-mode=append; signals sent to srun are forwarded to the tasks, except that SIGTERM
# (like SIGINT twice, SIGQUIT and SIGHUP) ends the step: srun prints "forcing job
# termination" and SIGKILLs every task (seen with SLURM 22.05: tasks "Killed"); its exit
# code is the highest of the tasks', 128 + N for a task killed by signal N ("EXIT CODE").
import os, signal, subprocess, sys
args = sys.argv[1:]
output, mode = None, "w"
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag.startswith("--output="):
        output = flag.split("=", 1)[1]
    if flag == "--open-mode=append":
        mode = "a"
n = int(os.environ["SLURM_NTASKS"])
procs = []
for t in range(n):
    env = {{**os.environ, "SLURM_PROCID": str(t), "SLURM_LOCALID": str(t), "SLURM_STEP_ID": "0",
           "SLURM_STEP_NODELIST": os.environ["SLURM_JOB_NODELIST"],
           "SLURM_STEP_NUM_TASKS": str(n)}}
    log = open(output.replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", str(t)), mode)
    procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
with open(os.path.join(os.environ["FAKE_SLURM_DIR"], "tasks"), "w") as f:
    f.write(" ".join(str(p.pid) for p in procs))
def end_step(*_):
    print("srun: forcing job termination", file=sys.stderr, flush=True)
    for p in procs:
        p.kill()
signal.signal(signal.SIGTERM, end_step)
for sig in (signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, lambda s, _: [p.send_signal(s) for p in procs])
codes = [p.wait() for p in procs]
sys.exit(max(c if c >= 0 else 128 - c for c in codes))
"""


def fake_slurm(tmp_path, data_dir, steps):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL),
                       ("srun", FAKE_SRUN.format(python=sys.executable))):
        (bin_dir / name).write_text(textwrap.dedent(text))
        (bin_dir / name).chmod(0o755)
    workdir = str(tmp_path / "slurm_run")
    env = dict(os.environ)
    env.update({"PATH": f"{bin_dir}:{env['PATH']}", "SLURM_JOB_ID": "4242",
                "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                "SLURM_JOB_NODELIST": "localhost",  # the batch shell's variables
                "SLURM_SUBMIT_DIR": ROOT, "NME_COORDINATOR_PORT": str(free_port()),
                "WORKDIR": workdir, "CONFIG": "configs/default.py", "PYTHON": sys.executable,
                "JAX_PLATFORMS": "cpu", "FAKE_SLURM_LOG": str(tmp_path / "slurm.log"),
                "FAKE_SLURM_DIR": str(tmp_path), "XLA_FLAGS": xla_flags(2)})
    flags = trainer_flags(data_dir, workdir, steps)[2:]  # config and workdir come from env
    return env, workdir, flags


def test_slurm_script_runs_with_stand_ins(data_dir, tmp_path):
    env, workdir, flags = fake_slurm(tmp_path, data_dir, 20)
    out = subprocess.run(["bash", os.path.join(LAUNCH, "slurm.sbatch"), *flags], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 task(s) on localhost" in out.stdout
    logs = sorted(os.listdir(os.path.join(workdir, "logs")))
    assert logs == ["task-4242-0.log", "task-4242-1.log"]
    first = open(os.path.join(workdir, "logs", logs[0])).read()
    assert "nme_train.distributed: slurm; process 0 of 2; 2 local and 4 global" in first
    assert final_eval(workdir)["step"] == 20
    assert [r["step"] for r in read_metrics(workdir) if "train/loss" in r] == [5, 10, 15, 20]
    assert not os.path.exists(tmp_path / "slurm.log")  # finished: nothing requeued


def start_slurm_script(tmp_path, data_dir):
    """The script on a long run, once its tasks have saved step 10: (script, env, workdir,
    the tasks' pids)."""
    env, workdir, flags = fake_slurm(tmp_path, data_dir, 10**6)
    script = subprocess.Popen(["bash", os.path.join(LAUNCH, "slurm.sbatch"), *flags], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline = time.time() + 180
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "10")):
        assert script.poll() is None and time.time() < deadline, script.communicate()
        time.sleep(0.2)
    tasks = [int(p) for p in (tmp_path / "tasks").read_text().split()]
    return script, env, workdir, tasks


@pytest.mark.parametrize("batch_shell_too", [False, True])
def test_slurm_script_requeues_when_the_tasks_stop_on_a_signal(data_dir, tmp_path,
                                                                batch_shell_too):
    """The time-limit warning (--signal=TERM@T) signals the tasks, not the batch shell; scancel
    and the time limit signal the shell too. Either way the tasks save at one step and exit
    75, the script never passes SIGTERM to srun (which would SIGKILL them), requeues the
    job and exits 75 (a job stopped early never ends as completed)."""
    script, env, workdir, tasks = start_slurm_script(tmp_path, data_dir)
    if batch_shell_too:
        os.kill(script.pid, signal.SIGTERM)
        time.sleep(1)
    for pid in tasks:
        os.kill(pid, signal.SIGTERM)
    out, err = script.communicate(timeout=120)
    assert script.returncode == 75, out + err
    assert "srun exited with status 75" in out and "requeued job 4242" in out
    assert "forcing job termination" not in err
    assert open(tmp_path / "slurm.log").read().strip() == "requeue 4242"
    task0 = open(os.path.join(workdir, "logs", "task-4242-0.log")).read()
    step = int(task0.split("preempted by the scheduler at step ")[1].split(";")[0])
    assert saved_steps(os.path.join(workdir, "checkpoints"))[-1] == step


# -- static checks of the cluster files ----------------------------------------
def test_shell_scripts_pass_bash_n_and_shellcheck():
    scripts = [os.path.join(LAUNCH, f) for f in ("local.sh", "slurm.sbatch", "tpu_vm.sh")]
    for path in scripts:
        subprocess.run(["bash", "-n", path], check=True)
    shellcheck = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable),
                                                            "shellcheck")
    out = subprocess.run([shellcheck, "--severity=info", *scripts], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout
    sbatch = open(scripts[1]).read()
    for directive in ("#SBATCH --requeue", "#SBATCH --signal=TERM@", "--open-mode=append"):
        assert directive in sbatch
    # srun must never get SIGTERM from the script, nor kill a task still saving
    code = "\n".join(line for line in sbatch.splitlines() if not line.startswith("#"))
    assert "--kill-on-bad-exit" not in code and "kill -TERM" not in code


# What a TPU VM image holds, for tests/fake_gcloud.py's workers: a system python3 of the
# Ubuntu 22.04 runtimes (3.10, whose pip refuses a package requiring 3.11, in pip's words),
# and uv, which here records its arguments and makes a virtual environment of the test's
# own interpreter instead of downloading one.
FAKE_MACHINE_BIN = {
    "python3": """#!/usr/bin/env bash
if [ "$1" = "--version" ]; then echo "Python 3.10.12"; exit 0; fi
echo "ERROR: Package 'nme-train' requires a different Python: 3.10.12 not in '>=3.11'" >&2
exit 1
""",
    "uv": """#!/usr/bin/env bash
echo "uv $*" >> "$HOME/uv.log"
if [ "$1" = "venv" ]; then
  mkdir -p "$4/bin"
  printf '#!/usr/bin/env bash\nexec {python} "$@"\n' > "$4/bin/python"
  chmod +x "$4/bin/python"
fi
""",
}


def fake_slice(tmp_path, data_dir, workers=2):
    """GCLOUD=tests/fake_gcloud.py over `workers` simulated TPU VMs, each with its own
    metadata server (tests/gce_metadata.py) and TPU chips on its PCI bus; returns (env for
    launch/tpu_vm.sh, the servers to close)."""
    import json as _json

    from tests.gce_metadata import MetadataServer, fake_tpu_pci

    root = tmp_path / "gcloud"
    (root / "bin").mkdir(parents=True)
    for name, text in FAKE_MACHINE_BIN.items():
        (root / "bin" / name).write_text(text.replace("{python}", sys.executable))
        (root / "bin" / name).chmod(0o755)
    pci = fake_tpu_pci(str(tmp_path / "pci"))
    endpoints = ",".join(f"w-{i}:{i}:127.0.0.1" for i in range(workers))
    servers = [MetadataServer({"agent-worker-number": str(i),
                               "worker-network-endpoints": endpoints}).__enter__()
               for i in range(workers)]
    machines = [{"GCE_METADATA_IP": s.host, "NME_PCI_DEVICES": pci, "JAX_PLATFORMS": "cpu",
                 "XLA_FLAGS": xla_flags(1), "PYTHONPATH": ROOT} for s in servers]
    local = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the machines' own
    env = {**local, "GCLOUD": os.path.join(ROOT, "tests", "fake_gcloud.py"),
           "FAKE_GCLOUD_ROOT": str(root), "FAKE_GCLOUD_MACHINES": _json.dumps(machines),
           "TPU_NAME": "nme", "ZONE": "us-central2-b", "ACCELERATOR": f"v4-{8 * workers}",
           "WORKDIR": str(tmp_path / "run"), "DATA_DIR": data_dir,
           "CONFIG": "configs/default.py", "NME_COORDINATOR_PORT": str(free_port())}
    return env, servers


def tpu_vm(env, *args, timeout=120):
    out = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh"), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"tpu_vm.sh {args}: {out.stdout}{out.stderr}"
    return out.stdout


def wait_until(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.5)


def test_gcloud_stand_in_passes_no_environment_and_hangs_up_on_disconnect(tmp_path,
                                                                         data_dir):
    """What broke the old `run`: ssh passes none of the caller's variables, and a job tied
    to the ssh session dies when the connection drops; the old `setup`'s system python3 is
    3.10, which the package refuses."""
    env, servers = fake_slice(tmp_path, data_dir, workers=1)
    try:
        tpu_vm(env, "create")
        gcloud = [sys.executable, env["GCLOUD"], "compute", "tpus", "tpu-vm", "ssh", "nme",
                  "--zone=z", "--worker=all"]
        out = subprocess.run([*gcloud, "--command=echo ${NME_COORDINATOR_PORT:-unset}"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "worker 0: unset"
        out = subprocess.run([*gcloud, "--command=sleep 30; touch finished"],
                             env={**env, "FAKE_GCLOUD_SSH_TIMEOUT": "2"}, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 255
        time.sleep(1)
        assert not (tmp_path / "gcloud" / "nme" / "worker0" / "finished").exists()
        out = subprocess.run([*gcloud, "--command=python3 -m venv .venv && pip install ."],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "requires a different Python: 3.10.12" in out.stdout
    finally:
        for server in servers:
            server.__exit__()


def test_tpu_vm_script_on_a_simulated_slice(tmp_path, data_dir):
    """launch/tpu_vm.sh against the gcloud stand-in on 2 simulated workers: setup makes a
    Python 3.11 environment with the package and its gcs extra (not the dev tool chain);
    run passes the environment, detaches the job (a dropped ssh connection leaves it
    running) and the workers join through their metadata servers; after a Spot
    preemption (state PREEMPTED, the workers gone), recreate makes the slice again and
    the job resumes from its checkpoint."""
    import psutil

    env, servers = fake_slice(tmp_path, data_dir)
    workdir = env["WORKDIR"]
    flags = ["--config.num_epochs=-1", "--config.num_train_steps=100000",
             "--config.checkpoint.every_steps=20", "--config.log_every_steps=10",
             "--config.eval_every_steps=0", "--config.model.features=(8,16)",
             "--config.model.hidden=(32,)", "--config.batch_size=64"]
    try:
        tpu_vm(env, "create")
        tpu_vm(env, "setup")
        worker0 = tmp_path / "gcloud" / "nme" / "worker0"
        assert (worker0 / "nme_train" / "nme_train" / "main.py").exists()
        uv = (worker0 / "uv.log").read_text().splitlines()
        assert uv == ["uv venv --python 3.11 .venv",
                      "uv pip install --python .venv/bin/python .[gcs] jax[tpu]"]
        out = tpu_vm({**env, "FAKE_GCLOUD_SSH_TIMEOUT": "20"}, "run", *flags)
        assert out.count("job started") == 2  # ssh returned: the job is detached
        log = worker0 / "nme_train" / "logs" / "train.log"
        wait_until(lambda: saved_steps(os.path.join(workdir, "checkpoints")), 240,
                   "no checkpoint from the job")
        text = log.read_text()
        assert f"nme_train.distributed: tpu; process 0 of 2; 1 local and 2 global cpu " \
            f"device(s); coordinator 127.0.0.1:{env['NME_COORDINATOR_PORT']}" in text
        # a Spot preemption: the slice is PREEMPTED, its VMs and their processes gone
        (tmp_path / "gcloud" / "nme" / "state").write_text("PREEMPTED")
        for proc in psutil.process_iter(["cmdline", "environ"]):
            try:
                if "nme_train.main" in " ".join(proc.info["cmdline"] or []) and \
                        str(tmp_path) in (proc.info["environ"] or {}).get("HOME", ""):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        saved = saved_steps(os.path.join(workdir, "checkpoints"))[-1]
        assert tpu_vm(env, "status").strip() == "PREEMPTED"
        out = tpu_vm(env, "recreate", *[f.replace("100000", str(saved + 20)) for f in flags],
                     timeout=240)
        assert "nme is PREEMPTED; deleting and creating it again" in out
        wait_until(lambda: read_final(workdir) is not None, 240, "the recreated job did not "
                   "finish")
        log = (worker0 / "nme_train" / "logs" / "train.log").read_text()
        assert f"resumed from the checkpoint at step {saved}" in log
        assert read_final(workdir)["step"] == saved + 20
    finally:
        for server in servers:
            server.__exit__()
        subprocess.run(["pkill", "-KILL", "-f", f"workdir={workdir}"], check=False)


def test_kubernetes_restarts_a_preempted_job_and_completes_a_finished_one():
    """The manifests' failure policies, applied by a stand-in of the Job and JobSet
    controllers that follows their documentation (tests/k8s_policy.py): a drain of one pod
    (all processes save and exit 75; the drained pod has DisruptionTarget), a `kubectl
    delete pod` (exit 75, no condition) and a spot preemption restart the job without
    using up its restarts; a crash fails it (or uses a restart); a finished job completes.
    With the trainer's old exit code on SIGTERM, 0, the drained job would end Complete."""
    from nme_train.train.preemption import PREEMPTED_EXIT_CODE
    from tests.k8s_policy import job_result, jobset_result

    def pods(codes, disrupted=()):
        return [{"index": i, "exit_codes": {"trainer": c},
                 "conditions": [{"type": "DisruptionTarget", "status": "True"}]
                 if i in disrupted else []} for i, c in enumerate(codes)]

    stopped = PREEMPTED_EXIT_CODE
    for name, items in k8s_documents().items():
        doc = next(d for d in items if d["kind"] in ("Job", "JobSet"))
        if doc["kind"] == "Job":
            job = doc["spec"]
            n = job["completions"]
            assert job_result(job, pods([stopped] * n, disrupted={1})) == "Running", name
            assert job_result(job, pods([stopped] * n)) == "Running", name  # kubectl delete
            assert job_result(job, pods([0] * (n - 1) + [1])) == \
                "Failed: BackoffLimitExceeded", name
            assert job_result(job, pods([0] * n)) == "Complete", name
            assert job_result(job, pods([0] * n, disrupted={1})) == "Complete", name  # old
            continue
        (rjob,) = doc["spec"]["replicatedJobs"]
        job = rjob["template"]["spec"]
        n = job["completions"]
        drained = job_result(job, pods([stopped] * n, disrupted={1}))
        assert drained == "Failed: PodFailurePolicy", name
        assert jobset_result(doc["spec"], [drained], restarts=99) == "Restart (not counted)"
        crashed = job_result(job, pods([0] * (n - 1) + [1]))
        assert jobset_result(doc["spec"], [crashed]) == "Restart (counted)", name
        assert jobset_result(doc["spec"], [crashed], restarts=3) == "Failed", name
        assert jobset_result(doc["spec"], [job_result(job, pods([0] * n))]) == "Completed"
        old = job_result(job, pods([0] * n, disrupted={1}))  # exit 0 on SIGTERM
        assert jobset_result(doc["spec"], [old]) == "Completed", name


def k8s_documents():
    folder = os.path.join(LAUNCH, "k8s")
    return {name: list(yaml.safe_load_all(open(os.path.join(folder, name))))
            for name in sorted(os.listdir(folder)) if name.endswith(".yaml")}


def test_kubernetes_manifests_are_consistent():
    docs = k8s_documents()
    assert set(docs) == {"indexed-job.yaml", "jobset-gpu.yaml", "jobset-tpu.yaml"}
    for name, items in docs.items():
        for doc in items:
            assert {"apiVersion", "kind", "metadata", "spec"} <= set(doc), name
            if doc["kind"] == "Service":
                assert doc["spec"]["clusterIP"] == "None"  # headless: stable pod DNS names
                continue
            if doc["kind"] == "JobSet":
                assert doc["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
                (rjob,) = doc["spec"]["replicatedJobs"]
                job = rjob["template"]["spec"]
                job_name = f"{doc['metadata']['name']}-{rjob['name']}"
                subdomain = doc["spec"].get("network", {}).get("subdomain")
                coordinator_host = f"{job_name}-0-0.{subdomain}"
            else:
                assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "Job"
                job, job_name = doc["spec"], doc["metadata"]["name"]
                coordinator_host = f"{job_name}-0.{job['template']['spec']['subdomain']}"
            assert job["completionMode"] == "Indexed"
            assert job["parallelism"] == job["completions"]
            pod = job["template"]["spec"]
            assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] >= 60
            (container,) = pod["containers"]
            assert container["command"] == ["python", "-m", "nme_train.main"]
            assert any(a.startswith("--workdir=") for a in container["args"])
            env = {e["name"]: e for e in container.get("env", [])}
            # the pod's name tells a restarted pod from the one it replaces (the lock)
            assert env["NME_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            assert job["podReplacementPolicy"] == "Failed"
            rules = job["podFailurePolicy"]["rules"]
            assert rules[0]["onExitCodes"]["containerName"] == container["name"]
            if name == "jobset-tpu.yaml":  # TPU: JAX's own cluster detection
                assert "NME_COORDINATOR" not in env
                assert "google.com/tpu" in container["resources"]["limits"]
                continue
            assert env["NME_NUM_PROCESSES"]["value"] == str(job["completions"])
            assert env["NME_COORDINATOR"]["value"] == f"{coordinator_host}:29500"
            assert env["NME_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
                "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            # what a pod of index 1 would see is a valid layout
            layout = dist.detect({"NME_COORDINATOR": env["NME_COORDINATOR"]["value"],
                                  "NME_NUM_PROCESSES": env["NME_NUM_PROCESSES"]["value"],
                                  "NME_PROCESS_ID": "1"})
            assert layout.num_processes == job["completions"] and layout.process_id == 1
