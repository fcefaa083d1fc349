"""The paper's experiments as configs: every point of E1-E10 and the pilot validates, the grids
and their conventions, config-string errors, dry runs of each experiment."""

import importlib
import os
import subprocess
import sys

import pytest
from conftest import ROOT, xla_flags

from configs.paper import common
from nme_train.sweeps.grids import apply_overrides, product, seeds
from nme_train.sweeps.plan import expand
from nme_train.train.dry_run import dry_run
from nme_train.validation import validate

pytestmark = pytest.mark.slow


SWEEPS = ("e1", "e2", "e3", "e4", "e5", "e6", "e8", "e9", "e10")


def module(name):
    return importlib.import_module(f"configs.paper.{name}")


@pytest.mark.parametrize("name", SWEEPS)
def test_every_point_of_every_scale_validates(name):
    m = module(name)
    assert set(m.SCALES) == {"imagenet", "cifar10", "fashion_mnist", "study"}
    for scale in m.SCALES:
        points = expand(m, scale)
        assert len(points) >= 4 and len({p.name for p in points}) == len(points)
        seeds_used = {dict(p.tags)["seed"] for p in points}
        assert seeds_used == ({0, 1, 2} if scale == "study" else {0, 1})  # the paper used 2
        for point in points:
            config = m.get_config(f"{scale}/{point.name}")
            validate(config, 8)  # what the trainer checks first, for 8 devices
            assert config == apply_overrides(m.base(scale), point.overrides)


def test_grid_sizes_and_the_hyperparameter_conventions():
    e1 = expand(module("e1"), "cifar10")  # 2 activations x (none + 6 SAM + 6 GP) x 2
    assert len(e1) == 2 * 13 * 2
    study = expand(module("e1"), "study")  # BatchNorm on/off x 2 x (1 + 4 + 4) x 3
    assert len(study) == 2 * 2 * 9 * 3
    no_bn = module("e1").get_config("study/bn=false,activation=relu,method=gp,rho=1,seed=2")
    assert (no_bn.model.batch_norm, no_bn.optimizer.learning_rate) == (False, 0.1)
    assert no_bn.data.train_split == "train[:4000]" and no_bn.log_every_steps == 93
    e4 = {p.name: dict(p.overrides) for p in expand(module("e4"), "study")}
    head = "bn=false,activation=gelu"
    noise = e4[f"{head},method=weight_noise,sigma2=0.01,seed=0"]["regularizers"]
    assert noise == (("weight_noise", {"sigma": pytest.approx(0.1)}),)
    trace = e4[f"{head},method=hessian_trace,sigma2=0.01,seed=1"]["regularizers"]
    assert trace == (("hessian_trace_penalty", {"coef": 0.005}),)  # sigma^2 / 2 (Bishop)
    for method, estimator in (("gn_trace", "hutchinson"), ("gn_trace_sampled", "sampled_labels")):
        entry = e4[f"{head},method={method},sigma2=0.001,seed=2"]["regularizers"]
        assert entry == (("gauss_newton_trace_penalty", {"coef": 0.0005, "estimator": estimator}),)
    e5 = {p.name: dict(p.overrides) for p in expand(module("e5"), "study")}
    five = e5[f"{head},method=hessian_trace,sigma2=0.001,probes=5,seed=0"]["regularizers"]
    assert five[0][1]["num_probes"] == 5
    e3 = module("e3").get_config("study/bn=false,activation=relu_synthetic_nme,beta=16,"
                                 "method=gp,rho=1,seed=0")
    assert (e3.model.activation, e3.model.beta, e3.model.batch_norm) == \
        ("relu_synthetic_nme", 16.0, False)
    # points shared between experiments have the same names and configs
    for a, b in (("e1", "e2"), ("e1", "e3"), ("e1", "e10"), ("e4", "e5"), ("e4", "e6"),
                 ("e8", "e9")):
        ma, mb = module(a), module(b)
        shared = {p.name for p in expand(ma, "study")} \
            & {p.name for p in expand(mb, "study")}
        assert shared, (a, b)
        for name in shared:
            assert ma.get_config(f"study/{name}") == mb.get_config(f"study/{name}")
    e9 = module("e9").get_config("cifar10/beta=64,method=none,rho=0,seed=1")
    assert (e9.model.activation, e9.model.beta, e9.regularizers) == ("beta_gelu", 64.0, ())


def test_pilot_regimes_validate_and_pair_their_seeds():
    m = module("regime")
    points = expand(m, "pilot")
    # (none + 5 SAM radii) x (2 seeds of the rejected a4k, 3 of n4k, 5 of f4k and l4k)
    assert len(points) == 6 * (2 + 3 + 5 + 5) and len({p.name for p in points}) == len(points)
    steps = {}
    for point in points:
        config = m.get_config(f"pilot/{point.name}")
        validate(config, 8)
        assert config.model.batch_norm and config.data.train_split == "train[:4000]"
        assert config.optimizer.warmup_epochs == 5
        tags = point.tag_dict
        steps[tags["regime"]] = common.epoch_steps(config) * config.num_epochs
        # a seed's runs differ only in the regularizer: same init, data order, augmentation
        plain = m.get_config(f"pilot/regime={tags['regime']},method=none,rho=0,"
                             f"seed={tags['seed']}")
        config.regularizers = ()
        assert config == plain
    assert steps == {"a4k": 930, "n4k": 930, "f4k": 930, "l4k": 930}


def test_contrasts_run_in_the_pilots_label_noise_regime_with_the_study_probes():
    m, pilot = module("contrasts"), module("regime")
    plain = pilot.get_config("pilot/regime=l4k,method=none,rho=0,seed=3")
    bracket = expand(m, "bracket")
    # relu (none + SAM + GP; GP without NME over 8 rho), gelu (none + SAM + GP + GP without
    # NME; GP with G + NME_act over 8 rho), three GP-only arms
    assert len(bracket) == (1 + 2 * 5 + 8) + (1 + 3 * 5 + 8) + 3 * 5
    for point in bracket:
        config = m.get_config(f"bracket/{point.name}")
        validate(config, 8)
        assert "nme_activation" in config.probes.kinds and config.probes.lanczos_steps > 0
        # the pilot's l4k regime but for the arm's activation, regularizer and probes
        with config.unlocked():
            config.model.activation, config.model.beta = "relu", plain.model.beta
            config.regularizers, config.probes = (), plain.probes
        config.seed = 3
        assert config == plain, point.name
    spike = m.get_config("bracket/activation=relu_spike_nme,beta=1,method=gp,rho=0.2,seed=0")
    assert (spike.model.activation, spike.model.beta) == ("relu_spike_nme", 1.0)
    # the study: each arm's rho x 8 seeds; its seed-0 runs at a bracket rho are the
    # bracket's (the same config, so the sweep finds them finished)
    study = expand(m, "study")
    assert len(study) == 8 * (2 + sum(map(len, m.STUDY_RHOS.values()))) == 272 + 8 * 4 + 8 * 8
    names = {p.name for p in bracket}
    shared = [p for p in study if p.name in names]
    assert shared and all(p.tag_dict["seed"] == 0 for p in shared)
    for point in shared:
        assert m.get_config(f"study/{point.name}") == m.get_config(f"bracket/{point.name}")
    for (activation, method), rhos in m.STUDY_RHOS.items():
        runs = [p for p in study if p.tag_dict["activation"] == activation
                and p.tag_dict["method"] == method]
        assert sorted({p.tag_dict["rho"] for p in runs}) == list(rhos)
        assert sorted({p.tag_dict["seed"] for p in runs}) == list(range(8))
    warmup = expand(m, "warmup")
    assert len(warmup) == 6
    no_bn = m.get_config(f"warmup/{warmup[0].name}")
    assert not no_bn.model.batch_norm and no_bn.optimizer.warmup_epochs == 5
    assert no_bn.data.label_noise == 0 and no_bn.optimizer.learning_rate == 0.1


def test_bad_config_strings_name_the_fix():
    with pytest.raises(ValueError, match="unknown scale 'cifar100'"):
        module("e1").get_config("cifar100")
    with pytest.raises(ValueError, match="no point 'method=sam' in the study grid"):
        module("e1").get_config("study/method=sam")
    with pytest.raises(ValueError, match="combined twice"):
        product(seeds((0,)), seeds((1,)))
    with pytest.raises(KeyError, match="no field 'model.nonexistent'"):
        apply_overrides(module("e1").base("study"), [("model.nonexistent", 1)])


# One dry run per experiment file (8 fake devices, reduced image size and batch): its
# characteristic point at one of the full scales, so that every model and every
# regularizer of the grids is compiled. (ImageNet's ResNet-50: the CLI test below.)
DRY_RUNS = [
    ("e2", "fashion_mnist", "activation=gelu_nme_ablated,method=gp,rho=0.5,seed=0"),
    # the contrasts at the paper's scale: WideResNet-28-10 with the update's G + NME_act (its
    # nested twin in the training step)
    ("contrasts", "cifar10", "activation=gelu,method=gp_nme_act,rho=0.5,seed=0"),
    ("e3", "fashion_mnist", "activation=relu_synthetic_nme,beta=4,method=gp,rho=0.1,seed=0"),
    ("e4", "fashion_mnist", "activation=gelu,method=hessian_trace,sigma2=0.01,seed=0"),
    ("e5", "fashion_mnist", "activation=gelu,method=gn_trace_sampled,sigma2=0.001,probes=5,seed=1"),
    ("e6", "study", "bn=false,activation=gelu,method=weight_noise,sigma2=0.001,seed=0"),
    ("e8", "study", "bn=false,beta=64,method=gn_trace,sigma2=0.01,seed=0"),
    ("e9", "study", "bn=true,beta=8,method=none,rho=0,seed=1"),
    ("e10", "fashion_mnist", "activation=gelu,method=gp_no_nme,rho=0.5,seed=0"),
    # (the bracket's points are the study's configs at other rho and seeds: test_contrasts_...)
    ("contrasts", "study", "activation=relu_spike_nme,beta=1,method=gp,rho=0.3,seed=7"),
]


@pytest.mark.parametrize("name,scale,point", DRY_RUNS)
def test_dry_run_of_each_experiment(name, scale, point):
    config = module(name).get_config(f"{scale}/{point}")
    with config.unlocked():
        config.data.image_size = 16 if scale == "cifar10" else 0
        config.batch_size = config.eval_batch_size = config.probes.batch_size = 16
        config.data.data_dir = "/nonexistent/never-read"
        if scale == "cifar10":  # the training step alone (the probe's programs compile on
            # the smaller networks here, and on the accelerator script's ResNet-10)
            config.probes.kinds, config.probes.alignment = (), False
    report = dry_run(config)
    assert report["mesh"] == {"data": 8, "fsdp": 1}
    assert report["train_step"]["flops"] > 0
    # a probe of no curvature kind (E8/E9's sparsity probe) compiles no curvature program
    if config.probes.kinds:
        assert report["probe_step"]["flops"] > 0
    else:
        assert report["probe_step"] is None and "probe_share" not in report
    assert report["train_step"]["memory_mib_per_device"]["peak"] > 0
    if scale == "cifar10":
        assert report["parameters"] == 36_479_194  # WideResNet-28-10


def test_dry_run_of_e1_on_imagenet_from_the_command_line(tmp_path):
    """ResNet-50 (E1's baseline point), from its point's config string, at 32 px on 8 fake
    devices, without probes: the one compile of the bottleneck blocks. (SAM's step on it
    doubles the compile, ~45 s on a CPU, and SAM compiles on the smaller networks; the
    probe's programs compile in the dry runs above and in the accelerator script's
    ResNet-10, their command-line lines in tests/test_extending.py.)"""
    env = {**os.environ, "XLA_FLAGS": xla_flags(8),
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "nme_train.main",
         "--config=configs/paper/e1.py:imagenet/activation=gelu,method=none,rho=0,seed=1",
         f"--workdir={tmp_path / 'dry'}", "--dry_run", "--config.data.image_size=32",
         "--config.batch_size=16", "--config.eval_batch_size=16",
         "--config.probes.batch_size=16", "--config.mesh.fsdp=2",
         "--config.probes.kinds=()", "--config.probes.alignment=False",
         f"--config.data.data_dir={tmp_path / 'no_data'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dry run: 25,557,032 parameters; mesh {'data': 4, 'fsdp': 2} over 8 device(s)" \
        in out.stdout
    assert "train_step: compiled in" in out.stdout
    assert "probe_step: none (probes.kinds is empty and probes.alignment off" in out.stdout
    assert not os.path.exists(tmp_path / "no_data") and not os.path.exists(tmp_path / "dry")


def test_series_draw2_and_the_rest_of_the_paper_run_in_the_l4k_regime():
    """The contrasts' probe series (the three-part NME split) and second data draw, and
    E4-E6 / E8-E9 in l4k: the study's config but for what each changes."""
    m = module("contrasts")
    study = m.get_config("study/activation=gelu,method=gp,rho=0.4,seed=3")
    series = m.get_config("series/activation=gelu,method=gp,rho=0.3,seed=1")
    assert series.probes.kinds[-2:] == ("nme_normalization", "nme_between")
    draw2 = m.get_config("draw2/activation=gelu,method=gp,rho=0.4,seed=3")
    assert (draw2.data.train_split, draw2.data.label_noise_seed) == ("train[4000:8000]", 1)
    with draw2.unlocked():
        draw2.data.train_split, draw2.data.label_noise_seed = (study.data.train_split,
                                                               study.data.label_noise_seed)
    assert draw2 == study
    assert {p.tag_dict["seed"] for p in expand(m, "draw2")} == set(range(8))
    rest, beta = module("l4k_rest"), module("l4k_beta")
    for mod, scale in ((rest, "trace_bracket"), (rest, "trace_study"), (beta, "beta")):
        for point in expand(mod, scale):
            config = mod.get_config(f"{scale}/{point.name}")
            validate(config, 8)
            assert (config.data.label_noise, config.data.train_split, config.model.batch_norm,
                    config.optimizer.warmup_epochs) == (0.25, "train[:4000]", True, 5.0)
    assert module("common").epoch_steps(draw2) == 31  # 4,000 images of the slice


def test_the_contrasts_at_the_papers_scales_are_its_recipes_with_every_arm():
    """cifar10 / imagenet scales of the contrasts: every arm of the study (the update by
    source's cells too) on the paper's recipe, 2 seeds, the study's probes 4 times per run;
    ImageNet's batch split into the microbatches one 80 GiB GPU needs (the cifar10 point
    with G + NME_act compiles in test_dry_run_of_each_experiment)."""
    m = module("contrasts")
    for scale in m.PAPER_SCALES:
        points = expand(m, scale)
        arms = {(p.tag_dict["activation"], p.tag_dict["method"]) for p in points}
        assert {("gelu", "gp_nme_act"), ("relu", "gp_no_nme"), ("gelu", "gp_no_nme"),
                ("gelu_nme_ablated", "gp"), ("relu", "sam")} <= arms
        assert {p.tag_dict["seed"] for p in points} == {0, 1}
        recipe = common.base(scale)
        steps = int(recipe.num_epochs * common.epoch_steps(recipe))
        for point in points:
            config = m.get_config(f"{scale}/{point.name}")
            validate(config, 8)
            assert steps // config.probes.every_steps == m.PAPER_PROBES
            method = point.tag_dict["method"]
            assert config.get("grad_accum_steps", 1) == m.PAPER_ACCUM.get(scale, {}).get(
                method, 1)
            with config.unlocked():  # the recipe but for the arm, the seed and the probes
                for field in ("regularizers", "seed", "probes", "grad_accum_steps"):
                    config[field] = recipe.get(field)
                config.model.activation, config.model.beta = (recipe.model.activation,
                                                              recipe.model.beta)
            assert config == recipe, point.name
