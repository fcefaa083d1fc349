"""Profiler traces (from the config and on request to a running job) and where the wall
time goes (time/* shares), against a deliberately slow input and a deliberately slow save."""

import glob
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, cli_args, start, tiny_config
from tensorboard.backend.event_processing import plugin_asset_util

from nme_train.train import checkpoint, loop
from nme_train.train.loop import train_and_evaluate
from nme_train.train.metrics import read_metrics
from nme_train.train.profiling import REQUEST_FILE, read_profiles
from nme_train.train.timing import PHASES, TimeAccount, time_summary

SHARES = [f"time/{name}_share" for name in (*PHASES, "other")]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_account_shares_by_hand():
    clock = FakeClock()
    account = TimeAccount(clock)
    with account.phase("input"):
        clock.now += 1.0
    with account.phase("step"):
        clock.now += 3.0
    account.queue_depth(0)
    account.queue_depth(2)
    clock.now += 1.0  # other
    first = account.window()
    assert first["time/wall_sec"] == 5.0
    assert (first["time/input_share"], first["time/step_share"]) == (0.2, 0.6)
    assert first["time/other_share"] == pytest.approx(0.2)
    assert first["time/checkpoint_share"] == 0.0 and first["time/input_queue_depth"] == 1.0
    with account.phase("checkpoint"):
        clock.now += 5.0
    second = account.window()  # only the new window
    assert second["time/checkpoint_share"] == 1.0 and second["time/step_share"] == 0.0
    assert "time/input_queue_depth" not in second  # no step asked for a batch
    whole = account.run()
    assert (whole["time/wall_sec"], whole["time/checkpoint_share"]) == (10.0, 0.5)
    assert whole["time/step_share"] == 0.3 and whole["time/input_queue_depth"] == 1.0
    assert time_summary(whole) == ("where the time went: checkpoint 50% | step 30% | input 10% | "
                              "other 10% (input queue: 1.0 batches ready) of 10.0 s")


def trace_steps(trace_dir):
    """The step numbers annotated in a trace's host plane (read by jax's own XSpace reader):
    TensorBoard's step-time view delimits steps by these annotations."""
    from jax.profiler import ProfileData

    (path,) = glob.glob(os.path.join(trace_dir, "*.xplane.pb"))
    steps, modules = set(), set()
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if event.name == "train" and "step_num" in stats:
                    steps.add(int(stats["step_num"]))
                if "hlo_module" in stats:
                    modules.add(stats["hlo_module"])
    return sorted(steps), modules


@pytest.mark.slow
def test_time_shares_move_with_a_slow_input_and_a_slow_save(data_dir, tmp_path, monkeypatch):
    """Each log line and final.json carry the shares (they sum to 1); a slow input moves
    the wall time into `input` (and empties the read-ahead queue), a slow checkpoint write
    into `checkpoint`; a config trace of steps 3-4 lands where TensorBoard's profile plugin
    looks, holding those steps' annotations, and is recorded."""
    overrides = {"log_every_steps": 4, "eval_every_steps": 0, "checkpoint.every_steps": 4}
    traced = train_and_evaluate(
        tiny_config(data_dir, **overrides, **{"profile.start_step": 3, "profile.num_steps": 2}),
        str(tmp_path / "traced"))
    (record,) = read_profiles(str(tmp_path / "traced"))
    assert (record["start_step"], record["end_step"], record["source"]) == (3, 4, "config")
    logdir = str(tmp_path / "traced" / "tensorboard")
    (run,) = plugin_asset_util.ListAssets(logdir, "profile")  # the plugin's own listing
    assert record["trace_dir"] == os.path.join(
        plugin_asset_util.PluginDirectory(logdir, "profile"), run)
    steps, modules = trace_steps(record["trace_dir"])
    assert steps == [3, 4]
    assert any("train_step" in m for m in modules), modules  # the step's device work
    assert traced["time/profile_share"] > 0

    # the baseline after that first run (which paid for the first compile and save)
    base = train_and_evaluate(tiny_config(data_dir, **overrides), str(tmp_path / "base"))
    lines = [r for r in read_metrics(str(tmp_path / "base")) if "train/loss" in r]
    assert [r["step"] for r in lines] == [4, 8, 12, 16, 20, 24]
    for record in [*lines, base]:
        assert sum(record[k] for k in SHARES) == pytest.approx(1.0, abs=1e-6), record
    assert base["time/compile_share"] > 0 and base["time/step_share"] > 0

    batches = loop.train_batches

    def slow_batches(*args, **kwargs):
        for batch in batches(*args, **kwargs):
            time.sleep(0.2)
            yield batch

    monkeypatch.setattr(loop, "train_batches", slow_batches)
    # saved only at the end: the reader's sleeps cannot hide behind waits for a save
    slow_input = train_and_evaluate(
        tiny_config(data_dir, **{**overrides, "checkpoint.every_steps": 1000}),
        str(tmp_path / "input"))
    monkeypatch.setattr(loop, "train_batches", batches)

    write = checkpoint.Checkpointer._save

    def slow_write(self, *args, **kwargs):
        time.sleep(0.6)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "_save", slow_write)
    slow_save = train_and_evaluate(tiny_config(data_dir, **overrides), str(tmp_path / "save"))

    def seconds(record, phase):
        return record[f"time/{phase}_share"] * record["time/wall_sec"]

    shares = {name: {k.split("/")[1][:-6]: round(r[k], 3) for k in SHARES}
              for name, r in (("base", base), ("input", slow_input), ("save", slow_save))}
    # 24 batches 0.2 s late: about 4.8 s more waiting for input, the queue empty
    assert seconds(slow_input, "input") > seconds(base, "input") + 3.5, shares
    assert slow_input["time/input_share"] > max(0.5, base["time/input_share"]), shares
    assert slow_input["time/input_queue_depth"] < 0.5 < base["time/input_queue_depth"]
    # 6 saves, each written 0.6 s later, each waited for by the next: about 3 s more
    assert seconds(slow_save, "checkpoint") > seconds(base, "checkpoint") + 2.0, shares
    assert slow_save["time/checkpoint_share"] > max(0.5, base["time/checkpoint_share"]), shares
    assert slow_save["time/input_share"] < 0.2, shares
    assert not read_profiles(str(tmp_path / "input"))  # no trace asked for


@pytest.mark.slow
def test_a_running_job_serves_a_trace_request_at_its_next_step(data_dir, tmp_path):
    """`nme-profile` asks a running job for a trace of its next 3 steps: the job (started
    without any profile setting) starts it at the step after it reads the request, records
    it, removes the request and runs on to its end."""
    workdir = str(tmp_path / "job")
    traced = str(tmp_path / "traced")  # its batches are late until the trace is checked
    job = start([*cli_args(data_dir, workdir, steps=150, every=1000),
                 "--config.log_every_steps=1", "--config.profile.poll_seconds=0.05"],
                input_delay=0.1, delay_until=traced)
    try:
        deadline = time.monotonic() + 240
        logged = []
        while len(logged) < 10:  # running: past compilation, logging steps
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.2)
            logged = [r["step"] for r in read_metrics(workdir) if "train/loss" in r]
        asked = subprocess.run(
            [sys.executable, "-m", "nme_train.commands.profile", f"--workdir={workdir}",
             "--steps=3", "--wait=120"], cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert asked.returncode == 0, asked.stderr
        record = json.loads(asked.stdout.strip().splitlines()[-1])
        # the job had run at least max(logged) steps before it was asked; it looks for a
        # request at each step boundary (polling every 0.05 s, a step takes 0.1 s) and
        # traces from the next step on: within about a step of the request (a restart
        # would take many seconds)
        assert record["source"] == "request" and record["start_step"] > max(logged)
        assert 0 < record["start_time"] - record["request_time"] < 1.5, record
        assert record["end_step"] == record["start_step"] + 2
        steps, _ = trace_steps(record["trace_dir"])
        assert steps == list(range(record["start_step"], record["end_step"] + 1))
        assert not os.path.exists(os.path.join(workdir, REQUEST_FILE))
        open(traced, "w").close()
        out, err = job.communicate(timeout=240)
        assert job.returncode == 0, err
    finally:
        if job.poll() is None:
            job.kill()
    assert read_profiles(workdir) == [record]
    final = json.load(open(os.path.join(workdir, "final.json")))
    assert final["step"] == 150


def test_profile_command_refuses_a_missing_workdir_and_bad_steps(tmp_path):
    for args, field in (([f"--workdir={tmp_path / 'nowhere' / 'x'}"], "--workdir"),
                        ([f"--workdir={tmp_path}", "--steps=0"], "steps")):
        result = subprocess.run([sys.executable, "-m", "nme_train.commands.profile", *args],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result
        (line,) = result.stderr.strip().splitlines()
        assert "error:" in line and field in line, line
