"""The SLURM launchers against a real one-node SLURM cluster (Debian's slurm-wlm and munge).

Selected with `--slurm` (`python -m pytest --slurm -m slurm tests`); .ci/run installs
the packages and runs them. tests/slurm_cluster.py starts munged, slurmctld and slurmd
on this machine for the module and stops them after. Every job here is a real sbatch
job: the real sbatch parses --export, the real srun forwards (or refuses to forward)
signals, slurmctld sends the time-limit warning, cancels, preempts and requeues.

Trainer runs are made slow on purpose (tests/support/slow_input: each batch 0.1 s late)
so that a signal lands mid-training on any machine. SLURM holds a requeued job for about
two minutes before it may start again (its BeginTime); the tests release it at once
(`scontrol update StartTime=now`), as an administrator can.
"""

import json
import os
import shlex
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, SLOW_INPUT, xla_flags

from nme_train.train.metrics import read_metrics
from nme_train.train.rundir import read_final
from tests import slurm_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEPS = 400
DELAY = 0.1  # seconds per batch: a run of STEPS lasts about 40 s plus its start-up
TRAINER_FLAGS = ["--config.num_epochs=-1", f"--config.num_train_steps={STEPS}",
                 "--config.log_every_steps=50", "--config.eval_every_steps=0",
                 "--config.checkpoint.every_steps=100", "--config.model.features=(8,16)",
                 "--config.model.hidden=(32,)", "--config.batch_size=64"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, data_dir):
    """The cluster for this module; yields the environment sbatch and the trainers need."""
    directory = str(tmp_path_factory.mktemp("slurm"))
    with slurm_cluster.cluster(directory) as env:
        yield {**os.environ, **env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(1),
               "PYTHON": sys.executable, "REPO": ROOT, "TFDS_DATA_DIR": data_dir,
               "PYTHONPATH": os.pathsep.join([SLOW_INPUT, ROOT]),
               "NME_TEST_INPUT_DELAY": str(DELAY)}


def run(cmd, env, check=True):
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, f"{cmd}: {out.stdout}{out.stderr}"
    return out


def job_info(job, env) -> dict:
    """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
    out = run(["scontrol", "show", "job", "--oneliner", str(job)], env).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def wait_for(job, env, states, timeout=300, restarts=None):
    """Waits until the job's state is one of `states` (after `restarts` requeues, if given);
    returns its info."""
    deadline = time.time() + timeout
    while True:
        info = job_info(job, env)
        if info["JobState"] in states and (restarts is None
                                           or info["Restarts"] == str(restarts)):
            return info
        ended = info["JobState"] in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}
        assert not ended and time.time() < deadline, (
            f"job {job} {info['JobState']} after {info['Restarts']} restart(s), not "
            f"{states}" + (f" after {restarts}" if restarts is not None else "")
            + f"\n{job_logs(info)}")
        time.sleep(1)


def job_logs(info) -> str:
    """The ends of the job's output file and of its tasks' logs, for a failure message."""
    out = info.get("StdOut", "")
    paths = [out] if os.path.exists(out) else []
    logs = os.path.join(os.path.dirname(out), os.path.basename(out)[:-len(".out")], "logs")
    if out.endswith(".out") and os.path.isdir(logs):
        paths += [os.path.join(logs, name) for name in sorted(os.listdir(logs))]
    text = ""
    for path in paths:
        with open(path, errors="replace") as f:
            text += f"--- {path}\n{f.read()[-1500:]}\n"
    return text


def release(job, env):
    """Lets a requeued job start now instead of after SLURM's requeue delay."""
    run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env)


def submit(env, workdir, *sbatch_args, flags=TRAINER_FLAGS):
    """launch/slurm.sbatch with 2 tasks on the node's 2 CPUs; returns the job id."""
    out = run(["sbatch", "--parsable", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2",
               "--cpus-per-task=1", "--gpus-per-node=0", "--time=10",
               f"--output={workdir}.out", *sbatch_args, "launch/slurm.sbatch", *flags],
              {**env, "WORKDIR": workdir, "CONFIG": "configs/default.py"})
    return out.stdout.strip().split(";")[0]


def task_log(workdir, job, task=0) -> str:
    with open(os.path.join(workdir, "logs", f"task-{job}-{task}.log")) as f:
        return f.read()


def wait_for_training(workdir, job, env, step=50, timeout=180):
    """Until the job has logged training step `step` (it is past its start-up)."""
    deadline = time.time() + timeout
    while not any(r.get("step", 0) >= step and "train/loss" in r
                  for r in read_metrics(workdir)):
        assert time.time() < deadline, f"job {job} logged no step {step}: {job_info(job, env)}"
        time.sleep(0.5)


def stopped_step(workdir, job) -> int:
    """The step at which the tasks saved on the signal (from process 0's log)."""
    text = task_log(workdir, job)
    marker = "preempted by the scheduler at step "
    assert marker in text, text[-3000:]
    return int(text.split(marker)[1].split(";")[0])


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory):
    """The reference: the same 2-task job run to the end without a signal."""
    workdir = str(tmp_path_factory.mktemp("slurm_runs") / "uninterrupted")
    job = submit(slurm, workdir)
    info = wait_for(job, slurm, {"COMPLETED", "FAILED", "CANCELLED"})
    assert info["JobState"] == "COMPLETED", open(f"{workdir}.out").read()
    assert "slurm; process 0 of 2; 1 local and 2 global cpu device(s)" in task_log(workdir, job)
    return read_final(workdir)


def assert_resumed_to_the_reference(workdir, job, env, step, reference):
    release(job, env)
    info = wait_for(job, env, {"COMPLETED", "FAILED", "CANCELLED"})
    log = open(f"{workdir}.out").read()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log
    assert f"resumed from the checkpoint at step {step}" in task_log(workdir, job), log
    final = read_final(workdir)
    for key in ("step", "eval/accuracy", "eval/loss", "train/loss"):
        assert final[key] == reference[key], key


def test_time_limit_warning_saves_requeues_and_resumes(slurm, uninterrupted, tmp_path):
    """--signal=TERM@585 with a 10-minute limit: SIGTERM to the tasks 15-45 s in; they save
    at that step, exit 75, the script requeues the job, which resumes there and ends with
    the reference's metrics."""
    workdir = str(tmp_path / "time_limit")
    job = submit(slurm, workdir, "--signal=TERM@585")
    wait_for(job, slurm, {"RUNNING"})
    info = wait_for(job, slurm, {"PENDING", "COMPLETED", "FAILED", "CANCELLED"}, timeout=240,
                    restarts=1)
    assert info["JobState"] == "PENDING", (info, open(f"{workdir}.out").read())
    step = stopped_step(workdir, job)
    assert 0 < step < STEPS
    assert f"requeued job {job}" in open(f"{workdir}.out").read()
    # the requeued job keeps the warning: give it room to finish this time
    run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], slurm)
    assert_resumed_to_the_reference(workdir, job, slurm, step, uninterrupted)


def test_scancel_saves_and_the_job_is_requeued(slurm, uninterrupted, tmp_path):
    """scancel: SIGTERM to every process of the job (srun too, which then forwards
    SIGKILL); the tasks still save within KillWait, and the script requeues the job."""
    workdir = str(tmp_path / "scancel")
    job = submit(slurm, workdir)
    wait_for_training(workdir, job, slurm)
    run(["scancel", job], slurm)
    info = wait_for(job, slurm, {"PENDING", "COMPLETED", "FAILED", "CANCELLED"}, restarts=1)
    assert info["JobState"] == "PENDING", (info, open(f"{workdir}.out").read())
    step = stopped_step(workdir, job)
    assert_resumed_to_the_reference(workdir, job, slurm, step, uninterrupted)
    # a job cancelled while it waits is gone for good
    job = submit(slurm, str(tmp_path / "held"), "--begin=now+600")
    run(["scancel", job], slurm)
    assert wait_for(job, slurm, {"CANCELLED"})["JobState"] == "CANCELLED"


def test_preemption_with_grace_time_saves_and_resumes(slurm, uninterrupted, tmp_path):
    """A job of the `high` partition preempts ours (PreemptMode=REQUEUE, GraceTime): SIGTERM
    to the tasks only; they save, the job is requeued, runs after the preemptor and
    resumes at that step."""
    workdir = str(tmp_path / "preempted")
    job = submit(slurm, workdir, "--partition=low")
    wait_for_training(workdir, job, slurm)
    high = run(["sbatch", "--parsable", "--partition=high", "--ntasks=2",
                f"--output={tmp_path}/high.out", "--wrap", "echo preemptor ran"],
               slurm).stdout.strip()
    info = wait_for(job, slurm, {"PENDING", "COMPLETED", "FAILED", "CANCELLED"}, restarts=1)
    assert info["JobState"] == "PENDING", (info, open(f"{workdir}.out").read())
    step = stopped_step(workdir, job)
    assert wait_for(high, slurm, {"COMPLETED"})["JobState"] == "COMPLETED"
    assert_resumed_to_the_reference(workdir, job, slurm, step, uninterrupted)


def test_a_stopped_job_that_cannot_be_requeued_ends_failed(slurm, tmp_path):
    """--no-requeue: the tasks save on the warning and exit 75; the requeue is refused and
    the job ends FAILED with exit code 75, not COMPLETED."""
    workdir = str(tmp_path / "no_requeue")
    job = submit(slurm, workdir, "--signal=TERM@585", "--no-requeue")
    wait_for(job, slurm, {"RUNNING"})
    info = wait_for(job, slurm, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=240)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "75:0", (
        info, open(f"{workdir}.out").read())
    assert 0 < stopped_step(workdir, job) < STEPS
    assert "was not requeued: submit it again to resume" in open(f"{workdir}.out").read()


def test_trainer_in_the_batch_shell_runs_as_one_process(slurm, tmp_path):
    """The batch shell of a 2-task allocation has SLURM_PROCID and SLURM_NTASKS but no step:
    a trainer started there without srun is one process, not process 0 of 2."""
    workdir = str(tmp_path / "batch_shell")
    command = shlex.join([sys.executable, "-m", "nme_train.main", "--config=configs/default.py",
                          f"--workdir={workdir}",
                          *(f.replace(str(STEPS), "30") for f in TRAINER_FLAGS)])
    out = run(["sbatch", "--parsable", "--ntasks=2", f"--output={workdir}.out", "--wrap",
               command], {**slurm, "NME_TEST_INPUT_DELAY": "0"})
    info = wait_for(out.stdout.strip(), slurm, {"COMPLETED", "FAILED", "CANCELLED"})
    log = open(f"{workdir}.out").read()
    assert info["JobState"] == "COMPLETED", log
    assert "nme_train.distributed: single; process 0 of 1" in log
    assert read_final(workdir)["step"] == 30


def test_sweep_on_slurm_gives_each_job_its_own_point(slurm, tmp_path):
    """nme-sweep --launcher slurm with the real sbatch: point names hold commas, which
    sbatch's --export would split; every job trains its own point, in its own run
    directory, to the end."""
    experiment = tmp_path / "grid.py"
    experiment.write_text(textwrap.dedent(f"""
        from configs import default
        from nme_train.sweeps.grids import axis, experiment_config, product, seeds

        SCALES = ("tiny",)

        def base(scale):
            c = default.get_config()
            c.num_epochs, c.num_train_steps = -1, 20
            c.model.features, c.model.hidden = (8, 16), (32,)
            c.log_every_steps, c.eval_every_steps = 10, 0
            c.data.data_dir = {slurm["TFDS_DATA_DIR"]!r}
            return c

        def grid(scale):
            return product(axis("lr", "optimizer.learning_rate", (0.05, 0.2)), seeds((0, 1)))

        def get_config(arg="tiny"):
            return experiment_config(base, grid, SCALES, arg)
    """))
    workdir = tmp_path / "sweep"
    env = {**slurm, "NME_TEST_INPUT_DELAY": "0"}
    out = run([sys.executable, "-m", "nme_train.commands.sweep", f"--config={experiment}:tiny",
               f"--workdir={workdir}", "--launcher=slurm",
               "--sbatch_args=--nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=1 "
               "--gpus-per-node=0 --time=5"], env)
    jobs = [line.rsplit(" ", 1)[1] for line in out.stdout.splitlines()
            if line.startswith("sweep: lr=")]  # "sweep: POINT: Submitted batch job N"
    assert len(jobs) == 4, out.stdout
    for job in jobs:
        assert wait_for(job, env, {"COMPLETED", "FAILED", "CANCELLED"})["JobState"] == \
            "COMPLETED", job
    for lr in (0.05, 0.2):
        for seed in (0, 1):
            run_dir = workdir / f"lr={lr:g},seed={seed}"
            config = json.loads((run_dir / "config.json").read_text())
            assert (config["optimizer"]["learning_rate"], config["seed"]) == (lr, seed)
            assert read_final(str(run_dir))["step"] == 20
