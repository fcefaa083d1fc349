"""Checkpoints: exact resume after kill -9 and SIGTERM, topology changes, faults."""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import (
    ROOT,
    cli_args,
    finish,
    free_port,
    start,
    tiny_config,
    wait_for_checkpoint,
    xla_flags,
)

from nme_train.data import DATASETS
from nme_train.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    abstract_with_shardings,
    load_checkpoint,
    saved_steps,
)
from nme_train.train.loop import train_and_evaluate
from nme_train.train.metrics import read_metrics
from nme_train.train.program import build_program
from nme_train.train.resume import warm_start
from nme_train.train.rundir import read_final

pytestmark = pytest.mark.slow

DETERMINISTIC = ("train/loss", "train/accuracy", "train/grad_norm", "train/learning_rate")
STEPS = 1200


# The kill points are drawn from a seed (NME_TEST_SEED, default 0) and printed: pytest shows
# them with a failure, and the same seed replays the same delays.
KILL_SEED = int(os.environ.get("NME_TEST_SEED", "0"))


def kill_delay(what: str, longest: float) -> float:
    delay = random.Random(f"{what}/{KILL_SEED}").uniform(0.0, longest)
    print(f"{what}: {delay:.3f} s after the first checkpoint (NME_TEST_SEED={KILL_SEED})")
    return delay


def assert_same_params(workdir_a, workdir_b, step):
    a, _ = load_checkpoint(workdir_a, step)
    b, _ = load_checkpoint(workdir_b, step)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit


def assert_same_metric_lines(workdir_a, workdir_b):
    lines_a = {r["step"]: r for r in read_metrics(workdir_a) if "train/loss" in r}
    lines_b = {r["step"]: r for r in read_metrics(workdir_b) if "train/loss" in r}
    assert sorted(lines_a) == sorted(lines_b)  # no step lost or written twice
    for step in lines_a:
        for key in DETERMINISTIC:
            assert lines_a[step][key] == lines_b[step][key], (step, key)


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    finish(start(cli_args(data_dir, workdir)))
    return workdir


@pytest.mark.xdist_group("uninterrupted_run")  # one worker builds the uninterrupted run
def test_kill_9_then_resume_is_bitwise_identical(data_dir, uninterrupted, tmp_path):
    workdir = str(tmp_path / "killed")
    proc = start(cli_args(data_dir, workdir))
    wait_for_checkpoint(workdir, proc)
    time.sleep(kill_delay("kill -9", 1.0))
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(saved_steps(os.path.join(workdir, "checkpoints")))
    assert killed_at < STEPS
    out = finish(start(cli_args(data_dir, workdir)))
    assert f"resumed from the checkpoint at step {killed_at}" in out
    # the killed trainer's workdir lock (nme_train.train.lock) did not block the rerun
    assert f"warning: took over the lock of pid {proc.pid} on host" in out
    assert not os.path.exists(os.path.join(workdir, "writer.lock"))
    assert_same_params(uninterrupted, workdir, STEPS)
    assert_same_metric_lines(uninterrupted, workdir)


@pytest.mark.xdist_group("uninterrupted_run")  # one worker builds the uninterrupted run
def test_sigterm_saves_at_its_step_exits_75_and_resumes_exactly(data_dir, uninterrupted,
                                                                tmp_path):
    workdir = str(tmp_path / "terminated")
    proc = start(cli_args(data_dir, workdir))
    wait_for_checkpoint(workdir, proc)
    time.sleep(kill_delay("SIGTERM", 0.5))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-3000:]  # saved, not finished (preemption.py)
    line = [x for x in out.splitlines() if x.startswith("preempted by SIGTERM at step ")]
    assert len(line) == 1, out[-2000:]
    step = int(line[0].split("at step ")[1].split(";")[0])
    saved = saved_steps(os.path.join(workdir, "checkpoints"))
    assert saved[-1] == step
    out = finish(start(cli_args(data_dir, workdir)))
    assert f"resumed from the checkpoint at step {step}" in out
    assert_same_params(uninterrupted, workdir, STEPS)
    assert_same_metric_lines(uninterrupted, workdir)


def test_sigterm_while_compiling_stops_before_the_first_step_and_reruns_cleanly(
        data_dir, tmp_path, monkeypatch):
    """SIGTERM during the build (a long compile, on a pod) or the step-0 probe: the run
    stops at its first step boundary with nothing to save, instead of dying by the signal;
    the rerun starts over and keeps one probe record of step 0."""
    from nme_train.train.loop import Trainer
    from nme_train.train.probing import read_probes

    workdir = str(tmp_path / "early")
    config = short_config(data_dir, **{"probes.every_steps": 5, "probes.lanczos_steps": 3,
                                       "probes.trace_probes": 0, "probes.batch_size": 16,
                                       "probes.kinds": ("hessian",)})
    build = Trainer.build

    def build_then_signal(self):
        build(self)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the process is busy

    monkeypatch.setattr(Trainer, "build", build_then_signal)
    result = train_and_evaluate(config, workdir)
    assert result["preempted"] and result["step"] == 0
    assert saved_steps(os.path.join(workdir, "checkpoints")) == []
    assert [r["step"] for r in read_probes(workdir)] == [0]  # the probe before the check
    assert not os.path.exists(os.path.join(workdir, "writer.lock"))
    monkeypatch.setattr(Trainer, "build", build)
    final = train_and_evaluate(config, workdir)
    assert read_final(workdir)["step"] == 10 and "preempted" not in final
    assert [r["step"] for r in read_probes(workdir)] == [0, 5, 10]


def test_sigterm_while_the_libraries_load_is_held_until_the_run_can_stop(data_dir, tmp_path):
    """SLURM's time-limit warning can come while a task still imports jax or joins the
    job: `python -m nme_train.main` holds it from its first line, and the run stops at its
    first step boundary (exit 75) instead of dying by the signal."""
    workdir = str(tmp_path / "loading")
    proc = start(cli_args(data_dir, workdir))
    time.sleep(0.4)  # the imports alone take longer
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, (proc.returncode, err[-3000:])
    assert "preempted by SIGTERM before the first step (at step 0)" in out, out[-2000:]
    assert os.path.exists(os.path.join(workdir, "config.json"))  # it got as far as the run


def short_config(data_dir, **overrides):
    """conftest's tiny config, 10 steps with a checkpoint every 5 and no evaluation."""
    return tiny_config(data_dir, **{"num_train_steps": 10, "log_every_steps": 5,
                                    "eval_every_steps": 0, "checkpoint.every_steps": 5,
                                    **overrides})


def restore_on(config, workdir, devices, step):
    program = build_program(config, DATASETS["digits"], devices, 10, 10)
    ckpt = Checkpointer(workdir, read_only=True)
    state, meta = ckpt.restore(step, abstract_with_shardings(program.abstract_state,
                                                             program.state_sharding))
    return program, state, meta


def test_checkpoint_from_8_devices_restores_onto_1_and_4(data_dir, tmp_path):
    workdir = str(tmp_path / "fsdp")
    sharded = {"mesh.data": 4, "mesh.fsdp": 2, "sharding.fsdp_min_size": 256}
    train_and_evaluate(short_config(data_dir, **sharded), workdir)
    _, on8, meta = restore_on(short_config(data_dir, **sharded), workdir, jax.devices(), 10)
    assert meta["step"] == 10
    kernel8 = on8.params["Conv_1"]["kernel"]
    assert kernel8.sharding.spec[-1] == "fsdp"
    _, on1, _ = restore_on(short_config(data_dir, **{"mesh.data": 1}), workdir,
                           jax.devices()[:1], 10)
    exp4, on4, _ = restore_on(short_config(data_dir, **{"mesh.data": 2, "mesh.fsdp": 2,
                                                       "sharding.fsdp_min_size": 256}),
                              workdir, jax.devices()[:4], 10)
    assert len(on1.params["Conv_1"]["kernel"].sharding.device_set) == 1
    assert len(on4.params["Conv_1"]["kernel"].sharding.device_set) == 4
    for a, b, c in zip(jax.tree.leaves(on8), jax.tree.leaves(on1), jax.tree.leaves(on4)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    # and training goes on from it on one device
    result = train_and_evaluate(short_config(data_dir, **{"mesh.data": 1, "num_train_steps": 15}),
                                workdir, devices=jax.devices()[:1], extend=True)
    assert read_final(workdir)["step"] == 15 and np.isfinite(result["eval/loss"])


def tree_snapshot(root):
    return sorted((os.path.relpath(os.path.join(d, f), root),
                   os.path.getsize(os.path.join(d, f)), os.path.getmtime(os.path.join(d, f)))
                  for d, _, files in os.walk(root) for f in files)


def test_incompatible_config_lists_fields_and_touches_nothing(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    train_and_evaluate(short_config(data_dir, **{"mesh.data": 1}), workdir,
                       devices=jax.devices()[:1])
    os.remove(os.path.join(workdir, "final.json"))  # as if it had been interrupted at the end
    before = tree_snapshot(workdir)
    bad = short_config(data_dir, **{"mesh.data": 1, "model.features": (8, 24),
                                   "num_train_steps": 20})
    with pytest.raises(CheckpointError) as info:
        train_and_evaluate(bad, workdir, devices=jax.devices()[:1])
    message = str(info.value)
    assert "model.features: (8, 16) -> (8, 24)" in message
    assert "params/Conv_1/kernel: (3, 3, 8, 16) -> (3, 3, 8, 24)" in message
    assert "Nothing was changed" in message
    assert tree_snapshot(workdir) == before


def test_incomplete_and_corrupt_checkpoints_are_skipped(data_dir, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = short_config(data_dir, **{"mesh.data": 1})
    train_and_evaluate(config, workdir, devices=jax.devices()[:1])  # checkpoints 5 and 10
    ckpt_dir = os.path.join(workdir, "checkpoints")
    # a save killed half-way: orbax's temporary directory, never renamed
    os.makedirs(os.path.join(ckpt_dir, "15.orbax-checkpoint-tmp-1234567", "state"))
    # a complete-looking checkpoint whose array files are garbage
    for d, _, files in os.walk(os.path.join(ckpt_dir, "10", "state")):
        for f in files:
            with open(os.path.join(d, f), "wb") as fh:
                fh.write(b"\x00garbage")
    capsys.readouterr()
    result = train_and_evaluate(short_config(data_dir, **{"mesh.data": 1, "num_train_steps": 12}),
                                workdir, devices=jax.devices()[:1], extend=True)
    out = capsys.readouterr().out
    assert "checkpoint at step 10 is unreadable" in out
    assert sorted(os.listdir(ckpt_dir))[:3] == ["10", "10.unreadable", "12"]
    assert "resumed from the checkpoint at step 5" in out
    assert np.isfinite(result["eval/loss"])
    steps = [r["step"] for r in read_metrics(workdir) if "train/loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def test_failed_save_is_reported_and_keeps_older_checkpoints(data_dir, tmp_path, monkeypatch):
    workdir = str(tmp_path / "full")
    original = Checkpointer._save

    def save_or_fail(self, step, state, meta, wait):
        if step > 5:
            raise OSError(28, "No space left on device")
        return original(self, step, state, meta, wait)

    monkeypatch.setattr(Checkpointer, "_save", save_or_fail)
    config = short_config(data_dir, **{"mesh.data": 1, "num_train_steps": 15})
    with pytest.raises(CheckpointError, match="No space left on device.*Older checkpoints were "
                                              "left in place"):
        train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    state, meta = load_checkpoint(workdir)
    assert meta["step"] == 5 and "params" in state


def test_a_failed_save_names_what_to_check_for_a_disk_or_a_bucket():
    from nme_train.train.checkpoint import save_failure_fix

    assert save_failure_fix("/runs/r50/checkpoints") == ("free disk space or fix the "
                                                         "permissions of the workdir")
    fix = save_failure_fix("gs://nme-runs/r50/checkpoints")
    assert "bucket nme-runs exists" in fix and "roles/storage.objectAdmin" in fix
    assert "disk" not in fix


def test_unusable_checkpoint_dir_is_reported_before_training(data_dir, tmp_path):
    workdir = tmp_path / "blocked"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("a file where the checkpoint directory should be")
    with pytest.raises(CheckpointError, match="cannot use .*checkpoints for checkpoints"):
        train_and_evaluate(short_config(data_dir, **{"mesh.data": 1}), str(workdir),
                           devices=jax.devices()[:1])
    assert sorted(os.listdir(workdir)) == ["checkpoints"]  # nothing else was written


def test_init_from_copies_params_with_a_fresh_optimizer(data_dir, tmp_path):
    source = str(tmp_path / "source")
    config = short_config(data_dir, **{"mesh.data": 1})
    train_and_evaluate(config, source, devices=jax.devices()[:1])
    program = build_program(config, DATASETS["digits"], jax.devices()[:1], 10, 10)
    fresh = program.init()
    warm, where = warm_start(source, fresh, program.state_sharding)
    saved, _ = load_checkpoint(source, 10)
    for a, b in zip(jax.tree.leaves(warm.params), jax.tree.leaves(saved["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(warm.opt_state), jax.tree.leaves(fresh.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(warm.step) == 0 and "step 10" in where
    # through the config: a new workdir starts from those weights
    warm_dir = str(tmp_path / "warm")
    train_and_evaluate(short_config(data_dir, **{"mesh.data": 1, "init_from": source}),
                       warm_dir, devices=jax.devices()[:1])

    def first_loss(workdir):  # the mean training loss of steps 1-5 (the same batches in both)
        return [r for r in read_metrics(workdir) if "train/loss" in r][0]["train/loss"]

    assert first_loss(warm_dir) < first_loss(source)


def test_max_to_keep_and_keep_every_steps(data_dir, tmp_path):
    workdir = str(tmp_path / "keep")
    config = short_config(data_dir, **{"mesh.data": 1, "num_train_steps": 30,
                                      "checkpoint.max_to_keep": 2,
                                      "checkpoint.keep_every_steps": 10})
    train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    kept = saved_steps(os.path.join(workdir, "checkpoints"))
    assert kept == [10, 20, 25, 30]  # the newest two, plus every multiple of 10


def start_workers(count, devices, workdir, data_dir, steps, *settings):
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags()}  # the worker adds its devices
    return [subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "multiprocess_worker.py"), str(i),
         str(count), str(port), str(devices), workdir, data_dir, str(steps), *settings],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(count)]


@pytest.mark.multiprocess
def test_multiprocess_sigterm_stops_all_processes_at_one_step(data_dir, tmp_path):
    """SIGTERM to one process of two: both stop at the same step, save once, exit 0.
    Before that, a profiler request is served by both processes at one log step (the
    poll is a collective: polled by the clock, the processes would mismatch it)."""
    from nme_train.train.profiling import read_profiles, request_profile

    workdir = str(tmp_path / "mp")
    procs = start_workers(2, 2, workdir, data_dir, 5000, "checkpoint.every_steps=20")
    wait_for_checkpoint(workdir, procs[0], timeout=180)
    request_profile(workdir, 3)
    deadline = time.time() + 120
    while not read_profiles(workdir):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [
            p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.2)
    (record,) = read_profiles(workdir)
    assert record["source"] == "request" and record["start_step"] % 10 == 0
    assert record["end_step"] == record["start_step"] + 2
    procs[1].send_signal(signal.SIGTERM)
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        outs.append(out)
    steps = {line.split("step=")[1].split()[0] for out in outs for line in out.splitlines()
             if "preempted=True" in line}
    assert len(steps) == 1, outs
    step = int(steps.pop())
    saved = saved_steps(os.path.join(workdir, "checkpoints"))
    assert saved[-1] == step < 5000
    # metrics are written by process 0 only: each logged step appears once
    logged = [r["step"] for r in read_metrics(workdir) if "train/loss" in r]
    assert logged == sorted(set(logged))
    # the job moves to one process with one device and finishes from that checkpoint
    out = finish(start(cli_args(data_dir, workdir, steps=step + 20) +
                       ["--config.checkpoint.every_steps=100"]), timeout=120)
    assert f"resumed from the checkpoint at step {step}" in out
