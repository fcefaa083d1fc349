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
from nme_train.train.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
LAUNCH = os.path.join(ROOT, "launch")


# -- layout detection ---------------------------------------------------------
def test_layouts_from_each_environment():
    assert dist.detect({}) == dist.Layout("single")
    assert dist.detect({"NME_COORDINATOR": "10.0.0.1:1234", "NME_NUM_PROCESSES": "4",
                        "NME_PROCESS_ID": "3"}) == dist.Layout("explicit", "10.0.0.1:1234", 4, 3)
    assert dist.detect({"NME_COORDINATOR": "head", "NME_NUM_PROCESSES": "2",
                        "JOB_COMPLETION_INDEX": "1"}) == dist.Layout("kubernetes", "head:29500",
                                                                     2, 1)
    slurm = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
             "SLURM_JOB_NODELIST": "gpu[07-10]", "NME_COORDINATOR_PORT": "4000",
             "PATH": "/nonexistent"}  # no scontrol: the list is parsed here
    assert dist.detect(slurm) == dist.Layout("slurm", "gpu07:4000", 8, 5)
    assert dist.detect({**slurm, "NME_ONE_TASK_PER_DEVICE": "1"}).local_device_ids == (1,)
    assert dist.detect({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).source == "single"
    tpu = {"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3", "TPU_WORKER_ID": "2"}
    assert dist.detect(tpu) == dist.Layout("tpu", None, 4, 2)
    assert dist.detect({"TPU_WORKER_HOSTNAMES": "t0"}).source == "single"  # one host
    # explicit values win over the scheduler's
    assert dist.detect({**slurm, "NME_COORDINATOR": "a:1", "NME_NUM_PROCESSES": "2",
                        "NME_PROCESS_ID": "0"}).source == "explicit"


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


def test_local_launcher_2x4_equals_1x8_and_resumes_on_other_layouts(data_dir, tmp_path):
    two, one = str(tmp_path / "2x4"), str(tmp_path / "1x8")
    out = launch(2, 4, trainer_flags(data_dir, two, 30))
    assert "explicit; process 0 of 2; 4 local and 8 global cpu device(s)" in out
    assert "mesh {'data': 8, 'fsdp': 1} over 8 cpu device(s)" in out
    launch(1, 8, trainer_flags(data_dir, one, 30))
    # the same global batches on both layouts: same training curve and final accuracy
    train_two = [r for r in read_metrics(two) if "train/loss" in r]
    train_one = [r for r in read_metrics(one) if "train/loss" in r]
    assert [r["step"] for r in train_two] == [5, 10, 15, 20, 25, 30]  # written once
    for a, b in zip(train_two, train_one):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
    assert final_eval(two)["eval/accuracy"] == final_eval(one)["eval/accuracy"]
    assert os.path.isdir(os.path.join(two, "checkpoints", "30"))
    assert sorted(os.listdir(os.path.join(two, "logs"))) == ["process_0.log", "process_1.log"]
    # the 2-process job goes on with 1 process x 8 devices, then 4 processes x 2 devices
    out = launch(1, 8, trainer_flags(data_dir, two, 40) + ["--extend"])
    assert "resumed from the checkpoint at step 30" in out
    out = launch(4, 2, trainer_flags(data_dir, two, 50) + ["--extend"])
    assert "resumed from the checkpoint at step 40" in out
    assert final_eval(two)["step"] == 50


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


def test_a_hung_process_fails_the_job_through_the_watchdog(data_dir, tmp_path):
    """SIGSTOP one of 2 processes: the other's watchdog ends it, the launcher fails the job."""
    import psutil

    launcher, victim = launch_two_and_find_process_1(
        data_dir, str(tmp_path / "hangs"), ["--grace=3"], ["--config.watchdog_seconds=10"])
    victim.suspend()  # SIGSTOP: alive, silent
    stopped = time.time()
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 3  # the watchdog's exit code, passed on
    assert time.time() - stopped < 60
    assert "process 0 exited with code 3; stopping the others" in err
    assert "no training step finished for 10 s" in err
    assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE


# -- SLURM, with srun and scontrol faked on localhost --------------------------
FAKE_SCONTROL = """#!/usr/bin/env bash
if [ "$1 $2" = "show hostnames" ]; then echo 127.0.0.1; exit 0; fi
if [ "$1" = "requeue" ]; then echo "requeue $2" >> "$FAKE_SLURM_LOG"; exit 0; fi
exit 1
"""

FAKE_SRUN = """#!{python}
# srun stand-in: runs SLURM_NTASKS copies of the command here, SLURM_PROCID = 0..N-1,
# one log per task (--output with %j, %t), forwards SIGTERM, fails if one task fails.
import os, signal, subprocess, sys
args = sys.argv[1:]
output = None
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag.startswith("--output="):
        output = flag.split("=", 1)[1]
n = int(os.environ["SLURM_NTASKS"])
procs = []
for t in range(n):
    env = {{**os.environ, "SLURM_PROCID": str(t), "SLURM_LOCALID": str(t)}}
    log = open(output.replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", str(t)), "w")
    procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in procs])
codes = [p.wait() for p in procs]
sys.exit(max(abs(c) for c in codes))
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
                "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "localhost",
                "SLURM_SUBMIT_DIR": ROOT, "NME_COORDINATOR_PORT": str(free_port()),
                "WORKDIR": workdir, "CONFIG": "configs/default.py", "PYTHON": sys.executable,
                "JAX_PLATFORMS": "cpu", "FAKE_SLURM_LOG": str(tmp_path / "slurm.log"),
                "XLA_FLAGS": xla_flags(2)})
    flags = trainer_flags(data_dir, workdir, steps)[2:]  # config and workdir come from env
    return env, workdir, flags


def test_slurm_script_runs_with_a_faked_allocation(data_dir, tmp_path):
    env, workdir, flags = fake_slurm(tmp_path, data_dir, 20)
    out = subprocess.run(["bash", os.path.join(LAUNCH, "slurm.sbatch"), *flags], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 task(s), coordinator 127.0.0.1:" in out.stdout
    logs = sorted(os.listdir(os.path.join(workdir, "logs")))
    assert logs == ["task-4242-0.log", "task-4242-1.log"]
    first = open(os.path.join(workdir, "logs", logs[0])).read()
    assert "nme_train.distributed: slurm; process 0 of 2; 2 local and 4 global" in first
    assert final_eval(workdir)["step"] == 20
    assert [r["step"] for r in read_metrics(workdir) if "train/loss" in r] == [5, 10, 15, 20]


def test_slurm_script_forwards_sigterm_and_requeues(data_dir, tmp_path):
    env, workdir, flags = fake_slurm(tmp_path, data_dir, 10**6)
    script = subprocess.Popen(["bash", os.path.join(LAUNCH, "slurm.sbatch"), *flags], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "10")):
        assert script.poll() is None and time.time() < deadline, script.communicate()
        time.sleep(0.2)
    script.send_signal(signal.SIGTERM)
    out, err = script.communicate(timeout=120)
    assert script.returncode == 0, out + err
    assert "forwarding to the tasks" in out and "requeueing job 4242" in out
    assert open(tmp_path / "slurm.log").read().strip() == "requeue 4242"
    task0 = open(os.path.join(workdir, "logs", "task-4242-0.log")).read()
    assert "preempted by the scheduler at step" in task0  # JAX's sync point caught it


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
    for directive in ("#SBATCH --requeue", "#SBATCH --signal=B:TERM@", "--kill-on-bad-exit=1"):
        assert directive in sbatch


def test_tpu_script_issues_the_gcloud_commands(tmp_path):
    """gcloud faked: each subcommand is recorded, not run."""
    log = tmp_path / "gcloud.log"
    fake = tmp_path / "gcloud"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "GCLOUD": str(fake), "TPU_NAME": "t1", "ZONE": "z1",
           "WORKDIR": "gs://b/run", "DATA_DIR": "gs://b/tfds"}
    for cmd in (["create"], ["setup"], ["run", "--config.batch_size=1024"], ["delete"]):
        subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh"), *cmd], env=env, check=True,
                       capture_output=True, timeout=120)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("compute tpus tpu-vm create t1 --zone=z1 --accelerator-type=v4-32")
    assert any("scp" in line and "--worker=all" in line for line in lines)
    run = next(line for line in lines if "nme_train.main" in line)
    assert "--worker=all" in run and "--workdir=gs://b/run" in run
    assert "--config.data.data_dir=gs://b/tfds" in run and "--config.batch_size=1024" in run
    assert lines[-1] == "compute tpus tpu-vm delete t1 --zone=z1 --quiet"


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
