"""The workdir policy (nme_train.train.rundir): what a rerun, a damaged checkpoint, a
divergence or a mistake on the command line does to a run directory.

Each case compares the files of the workdir before and after (names, sizes and
modification times) with what the policy says.
"""

import json
import os

import jax
import pytest
from conftest import run_command, with_overrides

from configs import default
from nme_train.train.checkpoint import CheckpointError
from nme_train.train.loop import train_and_evaluate
from nme_train.train.metrics import Diverged, read_metrics
from nme_train.train.program import build_program, setting_warnings
from nme_train.train.rundir import (
    SANE_LOSS_FACTOR,
    CheckpointHealth,
    RunDirError,
    read_diverged,
    read_final,
)
from nme_train.validation import ConfigError


def mlp_config(data_dir, **overrides):
    c = default.get_config("mlp")
    c.data.data_dir = data_dir
    c.model.hidden = (32,)
    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = -1
    c.num_train_steps = 10
    c.log_every_steps = 5
    c.eval_every_steps = 0
    c.checkpoint.every_steps = 5
    c.mesh.data = 1
    return with_overrides(c, **overrides)


def run(config, workdir, **kwargs):
    return train_and_evaluate(config, str(workdir), devices=jax.devices()[:1], **kwargs)


def files(root):
    """(path, size, mtime) of every file under root: any write shows."""
    return sorted((os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)),
                   os.path.getmtime(os.path.join(d, f)))
                  for d, _, names in os.walk(root) for f in names)


def checkpoint_names(workdir):
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def damage(workdir, step):
    """Truncates every array file of a checkpoint (the metadata still lists it)."""
    state = os.path.join(workdir, "checkpoints", str(step), "state")
    for d, _, names in os.walk(state):
        for name in names:
            if "/d" in d.replace(os.sep, "/"):
                open(os.path.join(d, name), "wb").close()


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished 10-step run (checkpoints 5 and 10), copied by the tests that change it."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    run(mlp_config(data_dir), workdir)
    return workdir


def copy_of(source, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(source, target, copy_function=shutil.copy2)
    return target


# -- 1: every checkpoint unreadable ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")  # one worker builds the finished run
def test_no_readable_checkpoint_sets_them_aside_and_starts_over(finished, data_dir, tmp_path,
                                                                capsys):
    workdir = copy_of(finished, tmp_path)
    os.remove(workdir / "final.json")  # an unfinished run whose checkpoints are all damaged
    damage(workdir, 5)
    damage(workdir, 10)
    capsys.readouterr()
    result = run(mlp_config(data_dir), workdir)
    out = capsys.readouterr().out
    assert "checkpoint at step 10 is unreadable (ValueError: OUT_OF_RANGE" in out
    assert "no readable checkpoint" in out and "starting from step 0" in out
    assert checkpoint_names(workdir) == ["10", "10.unreadable", "5", "5.unreadable"]
    assert read_final(workdir)["step"] == 10 and result["eval/accuracy"] > 0.5
    assert [r["step"] for r in read_metrics(workdir) if "train/loss" in r] == [5, 10]
    before = files(workdir)  # and the run is finished: a rerun leaves it alone
    assert run(mlp_config(data_dir), workdir)["nothing_to_do"]
    assert files(workdir) == before


# -- 2: divergence ---------------------------------------------------------------------

def test_checkpoint_health_picks_the_last_sane_checkpoint():
    health = CheckpointHealth(start_step=0, first_loss=None)
    for step, loss in [(1, 2.3), (2, 2.0), (3, 1.9), (4, 2.3 * SANE_LOSS_FACTOR * 2), (5, 1e9)]:
        if step > 1:
            health.saved(step - 1)  # a checkpoint after every step
        health.observe(step, loss)
    health.saved(5)
    # checkpoint c is judged by the loss of step c+1 (the loss at its parameters)
    assert [health.sane(s) for s in (1, 2, 3, 4, 5)] == [True, True, False, False, False]
    assert health.last_sane([1, 2, 3, 4, 5]) == 2
    resumed = CheckpointHealth(start_step=40, first_loss=2.3)
    assert resumed.sane(30) and not resumed.sane(40)  # older ones are trusted
    resumed.observe(41, 0.5)
    assert resumed.last_sane([30, 40]) == 40


@pytest.mark.slow
def test_divergence_keeps_metrics_and_rolls_back_to_the_last_sane_checkpoint(
        finished, data_dir, tmp_path):
    workdir = copy_of(finished, tmp_path)
    # continue the finished run with an exploding learning rate, saving every step
    explode = mlp_config(data_dir, num_train_steps=30, **{
        "optimizer.learning_rate": 1e6, "optimizer.warmup_epochs": 0.0,
        "checkpoint.every_steps": 1, "checkpoint.max_to_keep": 0, "log_every_steps": 1})
    with pytest.raises(Diverged) as info:
        run(explode, workdir, extend=True)
    e = info.value
    marker = read_diverged(workdir)
    assert marker["step"] == e.step and 11 < e.step < 30
    assert marker["last_sane_checkpoint"] == 10  # step 11's loss (at its parameters) was sane
    assert f"diverged at step {e.step}" in str(e) and "last sane checkpoint is step 10" in str(e)
    logged = [r["step"] for r in read_metrics(workdir) if "train/loss" in r]
    assert logged[-1] == e.step - 1  # the metrics up to the divergence are on disk
    names = checkpoint_names(workdir)
    assert "10" in names and not any(n.isdigit() and int(n) > 10 for n in names)
    assert f"{e.step - 1}.diverged" in names
    assert not any("tmp" in n for n in names)
    assert os.path.exists(workdir / "final.step10.json")  # the finished run's results
    # the same config again: refused, nothing touched
    before = files(workdir)
    with pytest.raises(RunDirError, match="would diverge again.*resume from step 10"):
        run(explode, workdir)
    assert files(workdir) == before
    # a lower learning rate resumes from the last sane checkpoint and finishes
    fixed = mlp_config(data_dir, num_train_steps=30, **{"optimizer.learning_rate": 0.05})
    result = run(fixed, workdir)
    assert read_final(workdir)["step"] == 30 and result["eval/accuracy"] > 0.5
    assert os.path.exists(workdir / f"diverged.step{e.step}.json")
    assert not os.path.exists(workdir / "diverged.json")


@pytest.mark.slow
def test_divergence_from_the_start_has_no_sane_checkpoint(data_dir, tmp_path):
    workdir = tmp_path / "nan"
    config = mlp_config(data_dir, num_train_steps=30, **{
        "optimizer.learning_rate": 1e6, "optimizer.warmup_epochs": 0.0,
        "checkpoint.every_steps": 1})
    with pytest.raises(Diverged, match="no checkpoint is sane; a rerun starts from step 0"):
        run(config, workdir)
    assert all(n.endswith(".diverged") for n in checkpoint_names(workdir))
    assert read_diverged(workdir)["last_sane_checkpoint"] is None


# -- 3: the training length --------------------------------------------------------------


# -- 4: a finished run is not rewritten ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")  # one worker builds the finished run
def test_finished_run_is_left_alone_unless_extended(finished, data_dir, tmp_path, capsys):
    workdir = copy_of(finished, tmp_path)
    before = files(workdir)
    capsys.readouterr()
    same = run(mlp_config(data_dir), workdir)
    assert same["nothing_to_do"] and "nothing to do" in capsys.readouterr().out
    # fields that do not change the result (where it runs, init_from) change nothing either
    assert run(mlp_config(data_dir, init_from=str(tmp_path / "missing"),
                          **{"checkpoint.every_steps": 3}), workdir)["nothing_to_do"]
    assert files(workdir) == before
    for overrides, hint in [({"num_train_steps": 0}, None),
                            ({"num_train_steps": 15}, "pass --extend"),
                            ({"optimizer.learning_rate": 0.1}, "use a new --workdir")]:
        if hint is None:
            with pytest.raises(ConfigError):
                run(mlp_config(data_dir, **overrides), workdir)
        else:
            with pytest.raises(RunDirError, match=hint):
                run(mlp_config(data_dir, **overrides), workdir)
        assert files(workdir) == before
    with pytest.raises(RunDirError, match="raise config.num_train_steps"):
        run(mlp_config(data_dir), workdir, extend=True)
    assert files(workdir) == before
    result = run(mlp_config(data_dir, num_train_steps=15), workdir, extend=True)
    assert read_final(workdir)["step"] == 15 and result["eval/accuracy"] > 0.5
    kept = json.loads((workdir / "final.step10.json").read_text())
    assert kept == json.loads((finished / "final.json").read_text())


# -- resume: which changes are accepted --------------------------------------------------

@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")  # one worker builds the finished run
def test_resume_refuses_a_change_of_what_the_checkpoint_is(finished, data_dir, tmp_path):
    workdir = copy_of(finished, tmp_path)
    os.remove(workdir / "final.json")
    before = files(workdir)
    for overrides in ({"seed": 1}, {"model.activation": "gelu"}, {"batch_size": 32}):
        with pytest.raises(CheckpointError, match="a resume keeps seed, batch_size"):
            run(mlp_config(data_dir, **overrides), workdir)
        assert files(workdir) == before


# -- 6: advice that works ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")  # one worker builds the finished run
def test_shape_change_advice_and_init_from_errors(finished, data_dir, tmp_path):
    workdir = copy_of(finished, tmp_path)
    os.remove(workdir / "final.json")
    wider = mlp_config(data_dir, **{"model.hidden": (48,)})
    with pytest.raises(CheckpointError) as info:
        run(wider, workdir)
    assert "model.hidden: (32,) -> (48,)" in str(info.value)
    assert "init_from" not in str(info.value)  # it cannot work for other parameter shapes
    new = tmp_path / "new"
    with pytest.raises(CheckpointError, match=r"config.init_from=.*do not fit this model .*"
                                              r"params/Dense_0/kernel: \(64, 32\) -> \(64, 48\)"):
        run(mlp_config(data_dir, init_from=str(finished), **{"model.hidden": (48,)}), new)
    assert not os.path.exists(new)  # no empty checkpoints/ left behind
    other_optimizer = mlp_config(data_dir, **{"optimizer.name": "adam"})
    with pytest.raises(CheckpointError, match="only the optimizer state differs.*init_from"):
        run(other_optimizer, workdir)


# -- 7: settings that do not do what they say ---------------------------------------------

@pytest.mark.slow
def test_warnings_for_settings_that_do_nothing(data_dir):
    from nme_train.data import DATASETS

    config = mlp_config(data_dir, **{"mesh.data": 1, "mesh.fsdp": 7,
                                     "sharding.fsdp_min_size": 1, "probes.every_steps": 5,
                                     "probes.lanczos_steps": 10**6})
    program = build_program(config, DATASETS["digits"], jax.devices()[:7], 10, 10)
    warnings = setting_warnings(config, program)
    assert any("config.mesh.fsdp=7: no parameter has a dimension divisible by 7" in w
               for w in warnings)
    assert any(f"exceeds the model's {program.num_params} parameters" in w for w in warnings)
    fine = mlp_config(data_dir)
    assert setting_warnings(fine, build_program(fine, DATASETS["digits"],
                                                   jax.devices()[:1], 10, 10)) == []


# -- 5: command-line mistakes ------------------------------------------------------------


def run_cli(module_or_script, *args):
    module = "." in module_or_script and not module_or_script.endswith(".py")
    return run_command(*(["-m", module_or_script] if module else [module_or_script]), *args,
                       devices=None)


@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")  # one worker builds the finished run
def test_cli_errors_are_one_line_and_leave_the_workdir_alone(finished, data_dir, tmp_path):
    workdir = copy_of(finished, tmp_path)
    before = files(workdir)
    bad_syntax = tmp_path / "broken.py"
    bad_syntax.write_text("def get_config(:\n")
    common = [f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]
    cases = [
        (["--config=configs/default.py", "--config.optimizer.lr=0.1"], "did you mean"),
        ([f"--config={bad_syntax}"], "SyntaxError"),
        (["--config=configs/default.py", "--config.batch_size=abc"], "--config.batch_size=abc"),
        (["--config=configs/default.py:mlp", "--config.num_epochs=-1",
          "--config.num_train_steps=10", "--config.model.hidden=(32,)",
          "--config.batch_size=64", "--config.optimizer.learning_rate=0.3"],
         "holds a finished run"),
    ]
    for argv, expected in cases:
        result = run_cli("nme_train.main", *argv, *common)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, result.stderr[-2000:]
        assert lines[-1].startswith("error: ") and expected in lines[-1], lines
        assert "Traceback" not in result.stderr
        assert files(workdir) == before
    debug = run_cli("nme_train.main", "--config=configs/default.py", "--config.optimizer.lr=1",
                    "--debug", *common)
    assert "Traceback" in debug.stderr  # --debug shows where it failed


def test_workdir_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    """The lock file names its holder; a second lock on the same workdir is refused while the
    holder lives; a holder whose process is gone (this host) or whose heartbeat stopped
    (another host) is replaced, saying why."""
    import socket
    import subprocess
    import sys

    from nme_train.train import lock as lk

    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    held = lk.WorkdirLock(workdir).acquire()
    holder = json.loads(open(os.path.join(workdir, lk.LOCK_FILE)).read())
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(lk.WorkdirLocked, match=f"another trainer \\(pid {os.getpid()} on host"):
        lk.WorkdirLock(workdir).acquire()
    held.release()
    assert not os.path.exists(os.path.join(workdir, lk.LOCK_FILE))
    # a lock left by a process that has exited (this host): taken over at once
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    path = os.path.join(workdir, lk.LOCK_FILE)
    with open(path, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": int(gone), "started": "then"}, f)
    again = lk.WorkdirLock(workdir).acquire()
    assert f"process {gone} on this host is no longer running" in again.taken_over
    again.release()
    # another host's lock: live while its heartbeat is recent, stale once it is old
    with open(path, "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "started": "then"}, f)
    with pytest.raises(lk.WorkdirLocked, match="pid 1 on host elsewhere"):
        lk.WorkdirLock(workdir).acquire()
    old = os.stat(path).st_mtime - lk.STALE_S - 5
    os.utime(path, (old, old))
    taken = lk.WorkdirLock(workdir).acquire()
    assert "heartbeat is" in taken.taken_over
    taken.release()
    # a lock that created its workdir removes it when nothing else was written
    fresh = lk.WorkdirLock(str(tmp_path / "fresh")).acquire()
    fresh.release()
    assert not os.path.exists(tmp_path / "fresh")


def test_workdir_lock_tells_a_restarted_holder_from_a_live_one(tmp_path, monkeypatch):
    """A restarted Kubernetes pod has the same host name and the same pid 1 as the pod it
    replaces, whose lock's heartbeat is seconds old: its new instance name (NME_INSTANCE,
    the pod's name in launch/k8s) shows the holder is gone, and the lock is taken at once.
    In one process table, a holder's pid reused by a later process is stale too; a lock
    of the same host name from another process table without instance names stays live
    until its heartbeat is old (nothing tells it is gone)."""
    import socket

    from nme_train.train import lock as lk

    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    path = os.path.join(workdir, lk.LOCK_FILE)
    other_table = {"host": socket.gethostname(), "pid": 1, "started": "then",
                   "boot_id": "another-node", "pid_namespace": "pid:[1]", "start_ticks": 7}

    def leave_lock(**fields):
        with open(path, "w") as f:
            json.dump({**other_table, **fields}, f)

    monkeypatch.setenv("NME_INSTANCE", "nme-train-workers-0-0-bbbbb")
    leave_lock(instance="nme-train-workers-0-0-aaaaa")
    taken = lk.WorkdirLock(workdir).acquire()
    assert ("its instance nme-train-workers-0-0-aaaaa was replaced by "
            "nme-train-workers-0-0-bbbbb under the same host name") in taken.taken_over
    assert json.loads(open(path).read())["instance"] == "nme-train-workers-0-0-bbbbb"
    taken.release()
    leave_lock(instance="nme-train-workers-0-0-bbbbb")  # the same instance: live
    with pytest.raises(lk.WorkdirLocked, match=r"pid 1 on host .* \(nme-train-workers-0-0-bbbbb"):
        lk.WorkdirLock(workdir).acquire()
    monkeypatch.delenv("NME_INSTANCE")
    leave_lock()  # no instance names: nothing tells, the heartbeat decides
    with pytest.raises(lk.WorkdirLocked):
        lk.WorkdirLock(workdir).acquire()
    # this process table: a live pid that started after the holder is not the holder
    leave_lock(pid=os.getpid(), **{k: v for k, v in lk.process_identity().items()
                                  if k != "start_ticks"}, start_ticks=1)
    taken = lk.WorkdirLock(workdir).acquire()
    assert f"process {os.getpid()} on this host is another process" in taken.taken_over
    taken.release()


@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")  # one worker builds the finished run
def test_probe_tool_reports_a_damaged_checkpoint_in_one_line(finished, data_dir, tmp_path):
    workdir = copy_of(finished, tmp_path)
    damage(workdir, 10)
    result = run_cli("nme_train.commands.probe", "--workdir", str(workdir),
                     "--set", "probes.kinds=()", "--set", f"data.data_dir={data_dir!r}")
    assert result.returncode == 1
    assert "probe: skipped the checkpoint at step 10 (ValueError: OUT_OF_RANGE" in result.stdout
    assert "TensorStore(" not in result.stdout + result.stderr
    # one error line; tensorstore's threads may print "Event loop is closed" tracebacks to
    # the same stderr meanwhile, even onto the start of that line
    errors = [x[x.index("probe: error: "):] for x in result.stderr.splitlines()
              if "probe: error: " in x]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].endswith("the checkpoint at step 10 could not be read (above)")
    assert not os.path.exists(workdir / "probe_snapshots")
    unknown = run_cli("nme_train.commands.probe", "--workdir", str(workdir),
                      "--set", "probes.lanczos=3")
    assert "did you mean probes.lanczos_steps" in unknown.stderr


@pytest.mark.slow
def test_cli_divergence_is_one_line(data_dir, tmp_path):
    workdir = tmp_path / "nan"
    result = run_cli("nme_train.main", "--config=configs/default.py:mlp",
                     f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
                     "--config.num_epochs=-1", "--config.num_train_steps=30",
                     "--config.model.hidden=(32,)", "--config.optimizer.learning_rate=1e6",
                     "--config.optimizer.warmup_epochs=0", "--config.mesh.data=1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: training diverged at step ")
    assert os.path.exists(workdir / "diverged.json")


@pytest.mark.slow
def test_save_that_cannot_fit_is_refused_before_writing(data_dir, tmp_path, monkeypatch):
    import shutil

    from nme_train import storage

    workdir = tmp_path / "full"
    real = shutil.disk_usage
    saves = []

    def usage(path):
        saves.append(path)
        free = 10**9 if len(saves) == 1 else 1000  # room for the first save only
        return real(path)._replace(free=free)

    monkeypatch.setattr(storage.shutil, "disk_usage", usage)
    with pytest.raises(CheckpointError, match=r"not enough free space .* MiB are free\. "
                                              r"Older checkpoints were left in place"):
        run(mlp_config(data_dir), workdir)
    assert checkpoint_names(workdir) == ["5"]  # the first save, and no half-written one




def test_a_field_added_since_a_run_was_made_is_no_change_at_its_default():
    """A run's config.json from before config.data.label_noise existed resumes and is swept
    as the same run; the same file with label noise asked for is a change."""
    from nme_train.train.rundir import config_changes

    new = json.loads(default.get_config().to_json_best_effort())
    old = json.loads(json.dumps(new))
    del old["data"]["label_noise"], old["data"]["label_noise_seed"]
    assert config_changes(old, new) == {}
    new["data"]["label_noise"] = 0.25
    assert config_changes(old, new) == {"data.label_noise": (None, 0.25)}
