"""Test setup: 8 fake CPU devices, fast compiles, a shared TFDS data dir, and small
dataset builders."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time

# Compile time dominates these tiny programs on a CPU, and the tests check results, not
# speed: every test process, and every process a test starts (through xla_flags), compiles at
# XLA's lowest backend optimization level and with the CPU backend's older elemental emitters
# instead of its fusion emitters (a ResNet probe: 120 s at the defaults, 46 s at level 0; the
# default CNN's penalty step 2.9 s at level 0, 0.5 s without the fusion emitters), and they
# share one on-disk compilation cache for the session. XLA aborts on a flag it does not know,
# so each flag is kept only if this jaxlib starts with it (checked once, by the controller).
CANDIDATE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def _starts_with(flags: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                           env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                           capture_output=True, timeout=300)
    return probe.returncode == 0


def _fast_compile_flags() -> str:
    if "NME_TEST_FAST_COMPILE" not in os.environ:  # xdist workers inherit the controller's
        every = " ".join(CANDIDATE_FLAGS)  # one probe where this jaxlib knows them all
        kept = every if _starts_with(every) else " ".join(
            flag for flag in CANDIDATE_FLAGS if _starts_with(flag))
        os.environ["NME_TEST_FAST_COMPILE"] = kept
    return os.environ["NME_TEST_FAST_COMPILE"]


FAST_COMPILE = _fast_compile_flags()


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test process: fast compiles and, if given, `devices` fake CPU devices."""
    return f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}" if devices \
        else FAST_COMPILE


# Must happen before jax is imported anywhere: 8 host devices for sharding tests.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags(8)}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="nme_test_jax_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update({"JAX_COMPILATION_CACHE_DIR": _cache,
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})

import numpy as np  # noqa: E402 - after the environment above
import PIL.Image  # noqa: E402
import pytest  # noqa: E402

from configs import default  # noqa: E402
from nme_train.config_fields import set_fields  # noqa: E402
from nme_train.train.checkpoint import saved_steps  # noqa: E402

SLURM_HINT = ("the checks against a real one-node SLURM cluster (tests/test_slurm.py, marker "
              "`slurm`) were not selected: run them with `python -m pytest --slurm -m slurm "
              "tests` as root where Debian's slurm-wlm and munge are installed (.ci/run does)")


def pytest_addoption(parser):
    parser.addoption("--slurm", action="store_true",
                     help="also run the checks against a real SLURM cluster started on this "
                          "machine (tests/test_slurm.py; needs Debian's slurm-wlm and munge)")


def pytest_collection_modifyitems(config, items):
    """Without --slurm the SLURM checks are deselected (and the summary says so); with it, a
    machine without SLURM is an error, not a skip."""
    if config.getoption("--slurm"):
        from tests.slurm_cluster import available

        missing = available()
        if missing:
            raise pytest.UsageError(f"--slurm: {', '.join(missing)} not found; install "
                                    "Debian's slurm-wlm and munge (apt-get install slurm-wlm "
                                    "munge)")
        return
    slurm = [item for item in items if item.get_closest_marker("slurm")]
    if slurm:
        config.hook.pytest_deselected(items=slurm)
        items[:] = [item for item in items if not item.get_closest_marker("slurm")]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not config.getoption("--slurm"):
        terminalreporter.write_line(SLURM_HINT, yellow=True)


@pytest.fixture(scope="module")
def float64():
    """Double precision for one test module (use it autouse there); the rest runs in float32."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def with_overrides(config, **overrides):
    """`config` with dotted-path fields replaced: with_overrides(c, **{"mesh.data": 4})."""
    return set_fields(config, overrides.items())


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name: str):
    """The script tools/<name>.py as a module (tools/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_tool_{name}",
                                                  os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_command(*args, devices: int | None = 1, timeout: float = 300, env=None):
    """`python ARGS` in the repository root (captured); `devices` fake CPU devices."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout,
                          env={**os.environ, "XLA_FLAGS": xla_flags(devices), **(env or {})})


def read_tensorboard(directory: str) -> dict[str, dict]:
    """Every run under `directory`, read by TensorBoard's own loader (EventMultiplexer).

    run name ("." for events directly in `directory`) -> {"scalars": {tag: [(step, value)]},
    "histograms": {tag: [(step, HistogramValue)]}, "tensors": {tag: [(step, TensorProto)]},
    "plugins": {plugin: {tag: content}}} (plugins: custom_scalars, hparams, text).
    """
    from tensorboard.backend.event_processing import event_accumulator, event_multiplexer

    guidance = {event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0,
                event_accumulator.TENSORS: 0}
    mux = event_multiplexer.EventMultiplexer(size_guidance=guidance)
    mux.AddRunsFromDirectory(directory)
    mux.Reload()
    runs = {}
    for run in mux.Runs():
        acc = mux.GetAccumulator(run)
        tags = acc.Tags()
        runs[run] = {
            "scalars": {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]},
            "histograms": {t: [(e.step, e.histogram_value) for e in acc.Histograms(t)]
                           for t in tags["histograms"]},
            "tensors": {t: [(e.step, e.tensor_proto) for e in acc.Tensors(t)]
                        for t in tags["tensors"]},
            "plugins": {name: dict(_plugin_tags(acc, name))
                        for name in ("custom_scalars", "hparams", "text")},
        }
    return runs


def _plugin_tags(accumulator, plugin: str) -> dict:
    try:
        return accumulator.PluginTagToContent(plugin)
    except KeyError:  # the run has no summary of that plugin
        return {}


def assert_probe_records_in_tensorboard(run: dict, records: list[dict]) -> None:
    """Each probe record's figures are in the TensorBoard `run` (read_tensorboard), at its step."""
    steps = [r["step"] for r in records]
    for kind in ("hessian", "gauss_newton", "nme"):
        for key in ("top_eigenvalues", "bottom_eigenvalues", "top_error_bounds"):
            for i in range(len(records[0][f"{kind}/{key}"])):  # every k, not only the first
                tag = f"probes/{kind}/{key}/{i}"
                assert [s for s, _ in run["scalars"][tag]] == steps, tag
                np.testing.assert_allclose([v for _, v in run["scalars"][tag]],
                                           [r[f"{kind}/{key}"][i] for r in records], rtol=1e-6)
        for key, sign in (("trace_lo", -1), ("trace_hi", 1)):
            np.testing.assert_allclose(
                [v for _, v in run["scalars"][f"probes/{kind}/{key}"]],
                [r[f"{kind}/trace"] + sign * r[f"{kind}/trace_se"] for r in records], rtol=1e-5)
        if f"{kind}/density" in records[0]:
            histograms = run["histograms"][f"probes/{kind}/density"]
            assert [s for s, _ in histograms] == steps
            for (_, h), r in zip(histograms, records):
                assert len(h.bucket) == len(r[f"{kind}/density"]["grid"])
                assert abs(sum(h.bucket) - 1.0) < 0.05  # a probability density over the grid
    assert run["plugins"]["custom_scalars"]  # the layout drawing each trace's mean +- SE


def tiny_config(data_dir, **overrides):
    """The default digits config, narrowed to a 24-step run of a small CNN."""
    c = default.get_config()
    c.data.data_dir = data_dir
    c.model.features = (8, 16)
    c.model.hidden = (32,)
    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = -1
    c.num_train_steps = 24
    c.log_every_steps = 8
    c.eval_every_steps = 16
    c.optimizer.learning_rate = 0.1
    return with_overrides(c, **overrides)


def cli_args(data_dir, workdir, steps=1200, every=100):
    """Command-line flags of a small digits run (the default CNN, narrowed, batch 32) in
    `workdir`."""
    return ["--config=configs/default.py", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", "--config.num_epochs=-1",
            f"--config.num_train_steps={steps}", f"--config.checkpoint.every_steps={every}",
            "--config.log_every_steps=10", "--config.eval_every_steps=0",
            "--config.model.features=(8,16)", "--config.model.hidden=(32,)",
            "--config.batch_size=32"]


SLOW_INPUT = os.path.join(ROOT, "tests", "support", "slow_input")


def slow_input_env(delay: float, until: str | None = None) -> dict[str, str]:
    """Environment for a trainer process whose every training batch comes `delay` s late
    (tests/support/slow_input), until the file `until` (if given) exists: a job that must
    keep running until the test acts on it then waits instead of taking a core from the
    tools the test runs beside it, and runs on at full speed once the test is done."""
    path = os.pathsep.join(filter(None, [SLOW_INPUT, os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "NME_TEST_INPUT_DELAY": str(delay),
            **({"NME_TEST_INPUT_DELAY_UNTIL": until} if until else {})}


def start(args, input_delay: float = 0.0, delay_until: str | None = None):
    """`python -m nme_train.main ARGS` on one fake device, in the background; with
    `input_delay`, each training batch that many seconds late (until the file
    `delay_until`, if given, exists)."""
    env = {**os.environ, "XLA_FLAGS": xla_flags(1),
           **(slow_input_env(input_delay, delay_until) if input_delay else {})}
    return subprocess.Popen([sys.executable, "-m", "nme_train.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_probe_watch(workdir, idle_timeout):
    """`nme-probe --watch` on `workdir` with a tiny probe suite, on one fake device
    (beside a training job on 2 loaded cores, the CPU backend's in-process all-reduce
    between fake devices can miss its 40 s rendezvous deadline and abort; sharded probes
    are tested by test_training_writes_probes_on_8_devices)."""
    return subprocess.Popen(
        [sys.executable, "-m", "nme_train.commands.probe", f"--workdir={workdir}", "--watch",
         "--poll_seconds=0.5", f"--idle_timeout={idle_timeout}",
         "--set", "probes.lanczos_steps=4", "--set", "probes.trace_probes=2",
         "--set", "probes.batch_size=32", "--set", "probes.top_k=2",
         "--set", "probes.bottom_k=2", "--set", "probes.density_runs=1",
         "--set", "probes.density_steps=4"],
        cwd=ROOT, env={**os.environ, "XLA_FLAGS": xla_flags(1)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def wait_for_checkpoint(workdir, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        d = os.path.join(workdir, "checkpoints")
        if saved_steps(d):
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    raise TimeoutError("no checkpoint appeared")


def free_port():
    """A TCP port free on this machine now (for a coordinator)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_plot(path, panels: int = 1) -> None:
    """`path` is a PNG plot: it decodes, is at least 300 px per panel wide and 200 px high,
    and is drawn on (many colours; a blank or single-colour image fails)."""
    with PIL.Image.open(path) as image:
        assert image.format == "PNG", (path, image.format)
        width, height = image.size
        assert width >= 300 * panels and height >= 200, (path, image.size)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20, (path, len(colours or ()))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data dir shared by the session (the digits set is prepared into it once)."""
    return str(tmp_path_factory.mktemp("tfds"))


def index_image(i: int, shape: tuple[int, int, int]) -> np.ndarray:
    """An image whose first pixels encode the example index (to trace examples)."""
    image = np.full(shape, 128, np.uint8)
    image[0, 0, 0], image[0, 1, 0] = i % 256, i // 256
    return image


def decode_index(images: np.ndarray) -> np.ndarray:
    """Inverse of index_image for a batch (only valid without geometric augmentation)."""
    return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 1, 0].astype(int)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> str:
    """A local TFDS `cifar10` (same features as the catalogue's) with 96 train, 40 test."""
    from nme_train.data.tfds_writer import encode_image, registered_features, write_dataset

    root = str(tmp_path_factory.mktemp("cifar"))
    features, version = registered_features("cifar10")

    def examples(n):
        return lambda: ({"id": f"train_{i}", "image": encode_image(index_image(i, (32, 32, 3))),
                         "label": i % 10} for i in range(n))

    write_dataset("cifar10", root, {"train": examples(96), "test": examples(40)}, features,
                  version)
    return root


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory) -> str:
    """The synthetic TFDS `imagenet2012`, small: 24 train, 10 validation JPEGs of 40-90 px.

    Labels are the example indices (1,000 classes), so a batch's labels name its examples.
    """
    from nme_train.data.prepare import prepare_synthetic_imagenet

    root = str(tmp_path_factory.mktemp("imagenet"))
    prepare_synthetic_imagenet(root, num_train=24, num_validation=10, short_side=(40, 90))
    return root


@pytest.fixture(scope="session")
def gcs():
    """A local GCS emulator with one bucket for the session (tests/support/gcs_emulator.py); the
    environment points this process and the commands it starts at it, and is restored."""
    from tests.support.gcs_emulator import Emulator

    emulator = Emulator("nme-test-bucket").start()
    before = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    yield emulator
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    emulator.stop()
