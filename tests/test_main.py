"""The command line: config file variants, overrides, and errors before any compile."""

import os

import pytest
from conftest import ROOT, run_command

from nme_train.cli import diagnose_config_flags
from nme_train.train.metrics import read_metrics

pytestmark = pytest.mark.slow


def run_main(*args):
    return run_command("-m", "nme_train.main", *args, devices=2)


def test_cli_variant_and_overrides(data_dir, tmp_path):
    workdir = str(tmp_path / "mlp")
    result = run_main("--config=configs/default.py:mlp", f"--workdir={workdir}",
                      f"--config.data.data_dir={data_dir}", "--config.num_epochs=-1",
                      "--config.num_train_steps=6", "--config.log_every_steps=3",
                      "--config.model.hidden=(32,)", "--config.model.activation=gelu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 6/6" in result.stdout and "final: step 6" in result.stdout
    assert "mlp (" in result.stdout and "2 cpu device(s)" in result.stdout
    assert [r["step"] for r in read_metrics(workdir) if "train/loss" in r] == [3, 6]


def test_cli_bad_config_fails_fast_with_the_field(data_dir, tmp_path):
    result = run_main("--config=configs/default.py", f"--workdir={tmp_path / 'bad'}",
                      f"--config.data.data_dir={data_dir}", "--config.batch_size=101",
                      "--config.optimizer.name=lamb")
    assert result.returncode != 0
    assert "config.batch_size=101 is not divisible" in result.stderr
    assert "config.optimizer.name='lamb' is not known" in result.stderr
    assert not os.path.exists(tmp_path / "bad")  # nothing was written


def test_a_second_config_flag_is_the_one_diagnosed(tmp_path):
    """A script appends --config to a base command: one error line for the file absl uses,
    no traceback, and nothing written."""
    result = run_main("--config=configs/default.py", f"--workdir={tmp_path / 'w'}",
                      "--config=configs/nope.py")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --config=configs/nope.py: no such file 'configs/nope.py'; give a config file with "
        "get_config(), e.g. --config=configs/default.py"]
    assert not os.path.exists(tmp_path / "w")


def test_an_unreachable_bucket_or_unknown_scheme_is_one_error_line(data_dir):
    """A gs:// workdir whose bucket cannot be reached (here: nothing listens at the
    storage address), or a scheme the layer does not serve: one error line naming the path
    and the fix before anything is built, and never a local folder named "gs:"."""
    unreachable = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
                   "NME_TRAIN_STORAGE_TIMEOUT": "2"}
    common = (f"--config.data.data_dir={data_dir}", "--config.num_train_steps=20",
              "--config.num_epochs=-1")
    result = run_command("-m", "nme_train.main", "--config=configs/default.py",
                         "--workdir=gs://nme-bucket/r1", *common, devices=2, env=unreachable)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: --workdir=gs://nme-bucket/r1: cannot use the bucket (")
    assert "credentials" in lines[0]
    result = run_main("--config=configs/default.py", "--workdir=s3://b/r1", *common)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --workdir=s3://b/r1: s3:// is not supported; give a local path or a "
        "gs://bucket/path"]
    assert not os.path.exists(os.path.join(ROOT, "gs:"))
    assert not os.path.exists(os.path.join(ROOT, "s3:"))


def test_cli_unknown_field_is_rejected(tmp_path):
    result = run_main("--config=configs/default.py", f"--workdir={tmp_path}",
                      "--config.optimizer.learnin_rate=0.1")
    assert result.returncode != 0
    assert "learnin_rate" in result.stderr


@pytest.mark.parametrize("argv,message", [
    (["--config=configs/default.py", "--config.optimizer.lr=0.1"],
     "--config.optimizer.lr: config has no field 'optimizer.lr'; did you mean "
     "optimizer.learning_rate"),
    (["--config=configs/nope.py"], "no such file 'configs/nope.py'"),
    (["--config=configs/default.py:foo"], "unknown variant 'foo'; choose one of"),
    (["--config=configs/paper/e1.py:nope"], "unknown scale 'nope'"),
    (["--config=configs/default.py"], None),
    # given twice (a base command with another appended): absl uses the last one
    (["--config=configs/default.py", "--config=configs/nope.py"],
     "no such file 'configs/nope.py'"),
    (["--config=configs/default.py", "--config", "configs/default.py:foo"],
     "unknown variant 'foo'"),
    (["--config=configs/nope.py", "--config=configs/default.py"], None),
    (["--config=configs/default.py", "--", "--config=configs/nope.py"], None),
])
def test_config_flag_mistakes_are_diagnosed(argv, message):
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        found = diagnose_config_flags(["main", *argv])
    finally:
        os.chdir(cwd)
    assert found == message if message is None else message in found
