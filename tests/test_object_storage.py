"""Workdirs in a bucket, against a local GCS emulator (the `gcs` fixture, conftest.py)."""

import os
import re
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

BUCKET = "nme-test-bucket"


def test_orbax_saves_and_restores_exactly_through_the_emulator(gcs):
    import orbax.checkpoint as ocp

    tree = {"w": jnp.arange(12.0).reshape(3, 4), "b": {"c": jnp.ones(5, jnp.bfloat16)}}
    path = f"gs://{BUCKET}/orbax/ck"
    with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=2)) as mgr:
        for step in (1, 2, 3):
            scaled = jax.tree.map(lambda x, s=step: x * s, tree)
            mgr.save(step, args=ocp.args.StandardSave(scaled))
        mgr.wait_until_finished()
        assert mgr.all_steps() == [2, 3]  # the oldest deleted in the bucket
        restored = mgr.restore(3, args=ocp.args.StandardRestore(tree))
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(tree)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want) * 3)
        assert got.dtype == want.dtype


def test_epath_on_the_emulator_has_the_semantics_the_workdir_needs(gcs):
    """What a run directory relies on, checked rather than assumed: write then read, exists,
    listing a "directory" gives its direct children only (not a sibling sharing its prefix,
    not grandchildren), and removal."""
    from etils import epath

    root = epath.Path(f"gs://{BUCKET}/semantics")
    (root / "run" / "config.json").write_text('{"a": 1}')
    (root / "run" / "checkpoints" / "10" / "state").write_text("x")
    (root / "run2" / "final.json").write_text("{}")  # shares the prefix "run"
    assert (root / "run" / "config.json").read_text() == '{"a": 1}'
    assert (root / "run" / "config.json").exists() and not (root / "run" / "nope").exists()
    assert sorted(p.name for p in (root / "run").iterdir()) == ["checkpoints", "config.json"]
    assert sorted(p.name for p in root.iterdir()) == ["run", "run2"]
    (root / "run" / "config.json").unlink()
    assert not (root / "run" / "config.json").exists()


# -- a run whose workdir is in the bucket -----------------------------------------------
def _in_bucket(gcs, name):
    return gcs.path("runs", name)


def _save_started(gcs, workdir, after_step):
    """The step of a checkpoint later than `after_step` whose first array data the emulator
    has received (tensorstore's upload naming it, in its request log), or None."""
    from urllib.parse import unquote

    key = workdir.split(f"gs://{gcs.bucket}/", 1)[1] + "/checkpoints/"
    steps = set()
    for method, path, *_ in list(gcs.requests):
        path = unquote(path)
        if method == "POST" and "uploadType=media" in path and key in path:
            head = path.split(key, 1)[1].split("/", 1)[0]
            if head.isdigit() and int(head) > after_step:
                steps.add(int(head))
    return min(steps) if steps else None


def test_a_bucket_run_killed_during_a_save_resumes_bitwise_and_keeps_the_policy(
        gcs, data_dir, tmp_path):
    """kill -9 while orbax writes a checkpoint into the bucket, rerun the same command:
    the final parameters and metrics equal an uninterrupted local run bit for bit; the
    killed trainer's lock is taken over. Then the workdir policy on the bucket: the
    finished run is "nothing to do", and a damaged newest checkpoint is set aside (copy,
    then delete) when the run is extended, which resumes from the one before."""
    from conftest import cli_args, finish, start
    from test_checkpoint import assert_same_metric_lines, assert_same_params

    from nme_train import storage
    from nme_train.train.checkpoint import saved_steps

    steps, every = 150, 50
    local = str(tmp_path / "local")
    finish(start(cli_args(data_dir, local, steps, every)))
    workdir = _in_bucket(gcs, "killed")
    proc = start(cli_args(data_dir, workdir, steps, every))
    deadline = time.time() + 240
    while (started := _save_started(gcs, workdir, every)) is None:  # the second save
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = saved_steps(storage.join(workdir, "checkpoints"))
    assert started not in finished, (started, finished)  # killed before it was committed
    assert storage.listdir(storage.join(workdir, "checkpoints", str(started)))
    out = finish(start(cli_args(data_dir, workdir, steps, every)))
    assert f"resumed from the checkpoint at step {max(finished)}" in out
    assert "the workdir is in a bucket: metrics and TensorBoard events are stored" in out
    assert f"warning: took over the lock of pid {proc.pid} on host" in out
    assert not storage.exists(storage.join(workdir, "writer.lock"))
    assert_same_params(local, workdir, steps)
    assert_same_metric_lines(local, workdir)
    assert not os.path.exists(os.path.join(ROOT, "gs:"))

    out = finish(start(cli_args(data_dir, workdir, steps, every)))
    assert f"nothing to do: {workdir} holds a finished run (step {steps}" in out

    state = storage.join(workdir, "checkpoints", str(steps), "state")
    for name in storage.listdir(state):  # damage the newest checkpoint's arrays
        if name.startswith("ocdbt"):
            storage.rmtree(storage.join(state, name))
    extended = [a.replace(f"num_train_steps={steps}", f"num_train_steps={steps + every}")
                for a in cli_args(data_dir, workdir, steps, every)]
    out = finish(start([*extended, "--extend"]))
    assert f"resumed from the checkpoint at step {steps - every}" in out
    names = storage.listdir(storage.join(workdir, "checkpoints"))
    assert f"{steps}.unreadable" in names and str(steps + every) in names
    assert storage.exists(storage.join(workdir, f"final.step{steps}.json"))


def test_a_live_lock_in_the_bucket_refuses_a_second_trainer(gcs, data_dir):
    """The lock object of a live trainer (this test's own pid and host) makes a second
    trainer refuse in one line, before anything is built; the lock is left as it was."""
    import json
    import socket

    from conftest import cli_args, run_command

    from nme_train import storage

    workdir = _in_bucket(gcs, "locked")
    lock = storage.join(workdir, "writer.lock")
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "now",
              "time": time.time()}
    generation = storage.create_object(lock, json.dumps(record).encode())
    result = run_command("-m", "nme_train.main", *cli_args(data_dir, workdir, 20, 10))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert re.fullmatch(
        rf"error: {re.escape(workdir)} is being written by another trainer \(pid "
        rf"{os.getpid()} on host {re.escape(socket.gethostname())}, started now, alive \d+ s "
        r"ago\); wait for it to finish or stop it \(a lock left by a killed trainer is taken "
        r"over once its process is gone, or after 60 s without a heartbeat from another "
        r"host\)", lines[0]), lines[0]
    assert int(storage.object_info(lock)["generation"]) == generation
    assert not storage.exists(storage.join(workdir, "config.json"))
    assert storage.delete_object(lock, generation)


def _download(gcs_path, local_dir):
    """Copies the objects under `gcs_path` into `local_dir` (for readers that need files)."""
    from nme_train import storage

    for name in storage.listdir(gcs_path):
        source, target = storage.join(gcs_path, name), os.path.join(local_dir, name)
        if storage.isdir(source):
            os.makedirs(target, exist_ok=True)
            _download(source, target)
        else:
            with open(target, "wb") as f:
                f.write(storage._fs(source).cat_file(source))


def test_probe_watch_and_plots_follow_a_job_in_the_bucket(gcs, data_dir, tmp_path):
    """nme-probe --watch beside a job whose workdir is in the bucket: it probes the
    job's checkpoints and writes its records and TensorBoard events into the bucket;
    nme-plot-curvature then reads them and writes its figures there."""
    import subprocess
    import sys

    from conftest import (
        assert_plot,
        assert_probe_records_in_tensorboard,
        cli_args,
        finish,
        read_tensorboard,
        start,
        start_probe_watch,
        wait_for_checkpoint,
    )

    from nme_train import storage
    from nme_train.train.checkpoint import saved_steps
    from nme_train.train.probing import read_probes

    workdir = _in_bucket(gcs, "watched")
    job = start(cli_args(data_dir, workdir, steps=200, every=50))
    wait_for_checkpoint(workdir, job)
    tool = start_probe_watch(workdir, idle_timeout=6)
    finish(job)
    tool_out, tool_err = tool.communicate(timeout=300)
    assert tool.returncode == 0, tool_err[-3000:]
    records = read_probes(workdir, "probes_offline.jsonl")
    steps = [r["step"] for r in records]
    assert steps and steps == sorted(set(steps))
    assert set(saved_steps(storage.join(workdir, "checkpoints"))) <= set(steps)
    local = tmp_path / "tensorboard"
    local.mkdir()
    _download(storage.join(workdir, "tensorboard"), str(local))
    runs = read_tensorboard(str(local))
    assert set(runs) == {".", "probes_offline"} and "train/loss" in runs["."]["scalars"]
    assert_probe_records_in_tensorboard(runs["probes_offline"], records)

    out = subprocess.run([sys.executable, "-m", "nme_train.commands.plot_curvature", workdir],
                         cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("curvature_spectra.png", "curvature_traces.png"):
        target = tmp_path / name
        target.write_bytes(storage._fs(workdir).cat_file(storage.join(workdir, name)))
        assert_plot(str(target))


def test_a_sweep_in_the_bucket_runs_resumes_and_summarizes_there(gcs, data_dir, tmp_path,
                                                                 request):
    """nme-sweep with a gs:// --workdir: every point's run, manifest and machine
    record in the bucket, the console logs on this machine; a second sweep finds them
    finished; nme-summarize reads the bucket and writes its tables and plot there."""
    import shutil

    from test_sweep import run_sweep, tiny_experiment

    from nme_train import storage
    from nme_train.commands import summarize
    from nme_train.train.rundir import read_final, read_machines

    config = tiny_experiment(tmp_path, data_dir, methods='{"gp": (0.1,)}')  # 2 points
    workdir = _in_bucket(gcs, "sweep")
    logs = os.path.join(ROOT, storage.local_logs(workdir))
    # only this test's logs: another worker's bucket tests write beside them
    request.addfinalizer(lambda: shutil.rmtree(logs, ignore_errors=True))
    out = run_sweep("--config", config, "--workdir", workdir, "--jobs", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    names = ["method=gp,rho=0.1,seed=0", "method=gp,rho=0.1,seed=1"]
    for name in names:
        assert read_final(storage.join(workdir, name))["step"] == 6
        assert len(read_machines(storage.join(workdir, name))) == 1
        with open(os.path.join(logs, name, "train.log"), encoding="utf-8") as f:
            assert "final: step 6" in f.read()
    assert storage.exists(storage.join(workdir, "sweep_tiny.json"))
    again = run_sweep("--config", config, "--workdir", workdir)
    assert again.returncode == 0 and "2 finished, 0 to run" in again.stdout
    assert summarize.main([workdir]) == 0
    table = storage.read_text(storage.join(workdir, "summary_tiny.md"))
    assert "| gp | 0.1 | 2 |" in table
    assert storage.exists(storage.join(workdir, "summary_tiny.csv"))
    assert storage.exists(storage.join(workdir, "summary_tiny.png"))
    assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_a_gs_data_dir_is_copied_once_per_machine_and_trains_like_the_local_one(
        gcs, data_dir, tmp_path, monkeypatch, capsys):
    """config.data.data_dir=gs://...: the newest prepared version is copied to this
    machine's staging directory once (a second run reuses it) and read from there; the
    run equals one on the local data step for step."""
    from conftest import tiny_config

    from nme_train import storage
    from nme_train.data import DATASETS, find_dataset_dir
    from nme_train.train.loop import train_and_evaluate
    from nme_train.train.metrics import read_metrics

    local = find_dataset_dir(DATASETS["digits"], data_dir)
    remote = storage.join(gcs.path("tfds"), "digits", os.path.basename(local))
    for name in os.listdir(local):
        with open(os.path.join(local, name), "rb") as f:
            storage.write_text(storage.join(remote, name), f.read())
    monkeypatch.setenv("NME_TRAIN_DATA_CACHE", str(tmp_path / "cache"))
    runs = {}
    for name, source in (("local", data_dir), ("bucket", gcs.path("tfds")),
                         ("again", gcs.path("tfds"))):
        train_and_evaluate(tiny_config(source), str(tmp_path / name))
        runs[name] = [r for r in read_metrics(str(tmp_path / name)) if "train/loss" in r]
    printed = capsys.readouterr().out
    assert printed.count("data: copying gs://") == 1  # the second bucket run reuses the copy
    staged = tmp_path / "cache" / gcs.bucket / "tfds" / "digits" / os.path.basename(local)
    assert sorted(os.listdir(staged)) == sorted(os.listdir(local))
    for a, b in zip(runs["local"], runs["bucket"], strict=True):
        assert a["train/loss"] == b["train/loss"]
    assert len(runs["again"]) == len(runs["local"])


def test_a_2_process_job_shares_a_bucket_workdir_and_resumes_on_1_process(
        gcs, data_dir, request):
    """Two processes (jax.distributed over loopback) train with one gs:// workdir; one is
    killed with SIGKILL after a checkpoint, the launcher stops the job; the same command on
    1 process x 2 devices resumes from that checkpoint in the bucket and finishes."""
    import shutil
    import subprocess
    import sys

    import psutil
    from conftest import xla_flags
    from test_launch import LAUNCH, launch, trainer_flags

    from nme_train import storage
    from nme_train.train.checkpoint import saved_steps
    from nme_train.train.rundir import read_final

    workdir = _in_bucket(gcs, "two")
    logs = os.path.join(ROOT, "logs", gcs.bucket, "runs", "two")  # launch/local.py's choice
    request.addfinalizer(lambda: shutil.rmtree(logs, ignore_errors=True))
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["XLA_FLAGS"] = xla_flags()
    launcher = subprocess.Popen(
        [sys.executable, os.path.join(LAUNCH, "local.py"), "--processes=2", "--devices=1",
         "--", *trainer_flags(data_dir, workdir, 10**6)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = storage.join(workdir, "checkpoints")
    deadline = time.time() + 240
    while not saved_steps(checkpoints):
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()
        time.sleep(0.2)
    victim = next(p for p in psutil.Process(launcher.pid).children()
                  if p.environ().get("NME_PROCESS_ID") == "1")
    victim.kill()
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    saved = max(saved_steps(checkpoints))
    total = saved + 20
    out = launch(1, 2, trainer_flags(data_dir, workdir, total))
    assert f"resumed from the checkpoint at step {saved}" in out
    assert read_final(workdir)["step"] == total
    assert os.path.exists(os.path.join(logs, "process_0.log"))


def test_divergence_in_the_bucket_sets_checkpoints_aside_and_warm_starts_from_it(
        gcs, data_dir):
    """A run in the bucket that diverges: diverged.json names the last sane checkpoint,
    later ones are set aside (copied, then deleted) as <step>.diverged, the metrics up to
    the divergence are stored; the same config again is refused. A new run warm-starts
    from that bucket workdir (config.init_from=gs://...)."""
    from test_rundir import mlp_config, run

    from nme_train import storage
    from nme_train.train.metrics import Diverged, read_metrics
    from nme_train.train.rundir import RunDirError, read_diverged

    workdir = _in_bucket(gcs, "diverging")
    run(mlp_config(data_dir), workdir)  # 10 sane steps, a checkpoint at 5 and 10
    explode = mlp_config(data_dir, num_train_steps=30, **{
        "optimizer.learning_rate": 1e6, "optimizer.warmup_epochs": 0.0,
        "checkpoint.every_steps": 1, "checkpoint.max_to_keep": 0, "log_every_steps": 1})
    with pytest.raises(Diverged) as info:
        run(explode, workdir, extend=True)
    step = info.value.step
    marker = read_diverged(workdir)
    assert marker["step"] == step and marker["last_sane_checkpoint"] == 10
    names = storage.listdir(storage.join(workdir, "checkpoints"))
    assert "10" in names and f"{step - 1}.diverged" in names
    assert not any(n.isdigit() and int(n) > 10 for n in names)
    assert [r["step"] for r in read_metrics(workdir) if "train/loss" in r][-1] == step - 1
    with pytest.raises(RunDirError, match="would diverge again"):
        run(explode, workdir)
    warm = _in_bucket(gcs, "warm")
    run(mlp_config(data_dir, init_from=workdir), warm)
    first = [r for r in read_metrics(warm) if "train/loss" in r][0]["train/loss"]
    cold = [r for r in read_metrics(workdir) if "train/loss" in r][0]["train/loss"]
    assert first < cold  # trained weights (from the bucket) start lower than random ones


def test_a_missing_gcs_client_is_one_line(monkeypatch):
    import sys

    from nme_train import storage

    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if it were not installed
    with pytest.raises(storage.StorageError, match=r"^--workdir=gs://b/r: reading and writing "
                       r"gs:// needs gcsfs; pip install gcsfs"):
        storage.check_reachable("gs://b/r", "--workdir")


def test_a_stale_lock_from_another_host_is_taken_over_once(gcs):
    """A lock object whose holder is on another host and whose heartbeat is older than
    60 s is taken over with the reason; of two rerunners that both judged the same
    generation stale, only the first deletes it (the second's conditional delete fails)."""
    import json

    from nme_train import storage
    from nme_train.train.lock import WorkdirLock, _LockObject

    workdir = _in_bucket(gcs, "stale")
    lock = storage.join(workdir, "writer.lock")
    old = {"host": "elsewhere", "pid": 1, "started": "then", "time": time.time() - 3600}
    generation = storage.create_object(lock, json.dumps(old).encode())
    assert storage.set_object_metadata(lock, generation, {"heartbeat": str(old["time"])})
    other = _LockObject(lock)
    held = WorkdirLock(workdir).acquire()
    try:
        assert held.taken_over.startswith("took over the lock of pid 1 on host elsewhere")
        assert "its heartbeat is 360" in held.taken_over  # about 3600 s old
        assert not other.remove_stale(generation)  # that generation is gone: refused
        assert json.loads(storage.read_text(lock))["pid"] == os.getpid()
        assert held._file.beat()  # the holder's heartbeat: its own generation
    finally:
        held.release()
    assert not storage.exists(lock)
