"""The decisive study's paired contrasts, in the regime the pilot chose (configs/paper/regime.py).

Regime `l4k`: the first 4,000 Fashion-MNIST training images with 25% symmetric
label noise (a fixed quarter relabelled, the same for every seed), no
augmentation, 30 epochs, the study's CNN (16 and 32 channels, 128 units) with
BatchNorm, Nesterov momentum 0.9 at learning rate 0.05, a 5-epoch warmup,
cosine decay. It is the one pilot regime where SAM beats plain training by a
margin the seeds resolve (docs/results.md, "The pilot").

Arms (tags `activation`, `method`, `rho`, `seed`; the surrogates add `beta`):

  relu                 none, SAM, the gradient penalty (E1), the penalty without its NME
                       (G only: ReLU's NME is all NME_rest)
  gelu                 none, SAM, the penalty, the penalty without its NME (E1, E10), the
                       penalty whose update keeps sigma'' and drops NME_rest (G + NME_act)
  gelu_nme_ablated     the penalty (E2: GELU's value and slope, sigma'' = 0)
  relu_synthetic_nme   the penalty (E3: ReLU with beta-GELU's sigma'')
  relu_spike_nme       the penalty (E3: ReLU with the smoothed spike beta phi(beta x))

Both surrogates at beta = 1: with BatchNorm the pre-activations have unit
scale, so a width 1/beta = 1 puts the injected sigma'' where the inputs are;
at beta = 1 the first surrogate is exactly GELU's sigma'' (so relu_synthetic_nme
and gelu differ only in value and slope), the second the sigma'' of ReLU
smoothed at the same width (non-negative, unit mass, like ReLU's own delta).

Scales:

  bracket   every arm over RHOS, seed 0: where each arm's best rho lies (a
            benefit of several points, as SAM's in the pilot, is located by one
            seed; the study then runs 3 rho around it)
  study     each arm at the rho of STUDY_RHOS (3 around its best in the
            bracket, shared between arms so that contrasts also compare at
            fixed rho; 6 for the penalty without its NME, whose best lies
            beyond the bracket's end) over seeds 0-7; seed 0's runs are the
            bracket's where the rho is one of RHOS (same config, same run
            directory)
  warmup    the schedule check: ReLU without BatchNorm at rho = 1 (SAM and the
            penalty) in the earlier study's regime (no label noise, learning
            rate 0.1), with this regime's 5-epoch warmup instead of 1, 3 seeds:
            does the collapse of docs/results.md disappear?
  series    the NME by its three sources over training (sigma'', BatchNorm's
            statistics, between layers: probes nme_normalization and
            nme_between added), at rho = 0.3 for every arm but the penalty
            without NME, seeds 0-2; the same training as the study's runs (the
            probes do not perturb it), in a workdir of its own
  draw2     a second data draw: the next 4,000 training images (train[4000:8000])
            with other corrupted labels (label_noise_seed 1), every arm of E1,
            E2, E10 and the update by source at its best rho in the study
            (DRAW2_RHOS), seeds 0-7
  cifar10   the paper's scales: every arm (the new cells too) with the paper's
  imagenet  recipes (WideResNet-28-10, ResNet-50; clean labels) over PAPER_RHOS,
            2 seeds, the study's probes 4 times per run; the cost and the launch
            command: docs/results.md, "The contrasts at the paper's scale"

Every run probes H, G, NME and the NME's two sources (activations and the
rest) along the gradient and at the ends of their spectra, the dead units per
layer and lambda_max(H) against the optimizer's stability threshold, every
PROBE_EPOCHS epochs.

    nme-sweep --config configs/paper/contrasts.py:bracket \
        --workdir study/contrasts --jobs 2
    nme-sweep --config configs/paper/contrasts.py:study \
        --workdir study/contrasts --jobs 2
    nme-sweep --config configs/paper/contrasts.py:warmup \
        --workdir study/contrasts_warmup --jobs 2
    nme-sweep --config configs/paper/contrasts.py:series \
        --workdir study/contrasts_series --jobs 2
    nme-sweep --config configs/paper/contrasts.py:draw2 \
        --workdir study/contrasts_draw2 --jobs 2
    nme-summarize study/contrasts --out docs/results
"""

from configs.paper import common, regime
from nme_train.sweeps.grids import Point, activations, experiment_config, methods, product, seeds

SCALES = ("bracket", "study", "warmup", "series", "draw2", "cifar10", "imagenet")
PAPER_SCALES = ("cifar10", "imagenet")
RHOS = (0.05, 0.1, 0.2, 0.5, 1.0)
# The arms without NME_rest in their update (G + NME_act for GELU, G alone for ReLU) are
# bracketed further: GELU's penalty without any NME peaks near rho = 4.
WIDE_RHOS = RHOS + (2.0, 4.0, 8.0)
WIDE_BRACKET = {("gelu", "gp_nme_act"), ("relu", "gp_no_nme")}
STUDY_SEEDS = tuple(range(8))
# (activation, method) -> the study's rho, from the bracket's seed-0 test accuracies
# (docs/results.md, "The decisive study: the contrasts"). SAM peaks at 0.2 for both
# activations (0.1 and 0.5 are 1-8 points lower): 0.1, 0.2, 0.3. Every penalty arm peaks at
# 0.2 or 0.5 (0.1 is 2-5 points lower, 1 lower still or collapsed): one shared grid
# 0.2, 0.3, 0.5, so that E1 (at 0.2, 0.3), E2, E3 and E10 also compare at fixed rho. The
# penalty without its NME still improves up to 1, the bracket's end, and at seed 0 still at 4
# (78.95% at 2, 81.20% at 4): 0.5 (shared), 1, 2, 4, 8, 16.
# Over 7-8 seeds two arms peaked at an end of that grid: GELU's SAM at 0.3 (its top) and
# ReLU with beta-GELU's sigma'' at 0.2 (its bottom). Both grids are widened so that the best
# is interior over all seeds: GELU's SAM to 0.4 and 0.5 (and GELU's penalty to 0.4, so that
# E1 for GELU still compares at every rho both sides ran; the sigma''-ablated GELU likewise,
# for E2), the surrogate to 0.1. ReLU's SAM and penalty also run at 1 and 2 over 8 seeds (the
# claims beyond 0.5 rested on seed 0).
PENALTY_RHOS = (0.2, 0.3, 0.5)
STUDY_RHOS = {
    ("relu", "sam"): (0.1, 0.2, 0.3, 1.0, 2.0), ("gelu", "sam"): (0.1, 0.2, 0.3, 0.4, 0.5),
    ("relu", "gp"): PENALTY_RHOS + (1.0, 2.0), ("gelu", "gp"): (0.2, 0.3, 0.4, 0.5),
    ("gelu", "gp_no_nme"): (0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
    ("gelu_nme_ablated", "gp"): (0.2, 0.3, 0.4, 0.5),
    ("relu_synthetic_nme", "gp"): (0.1,) + PENALTY_RHOS, ("relu_spike_nme", "gp"): PENALTY_RHOS,
    # the update by source (docs/results.md, "Which part of the NME"): the bracket put GELU's
    # G + NME_act best at 0.5 (79.60%; 76.31% at 1, dead at 2) and ReLU's G alone at 2
    # (83.33%; 82.21% at 1, 81.33% at 4, 60.63% at 8)
    ("gelu", "gp_nme_act"): (0.3, 0.4, 0.5, 0.7, 1.0), ("relu", "gp_no_nme"): (1.0, 2.0, 4.0),
}
ARMS = (("relu", ("none", "sam", "gp", "gp_no_nme")),
        ("gelu", ("none", "sam", "gp", "gp_no_nme", "gp_nme_act")),
        ("gelu_nme_ablated", ("gp",)), ("relu_synthetic_nme", ("gp",)),
        ("relu_spike_nme", ("gp",)))
# each arm's best rho over the study's 8 seeds (docs/results.md, "The update by source")
DRAW2_RHOS = {("relu", "sam"): 0.2, ("relu", "gp"): 0.3, ("relu", "gp_no_nme"): 2.0,
              ("gelu", "sam"): 0.3, ("gelu", "gp"): 0.4, ("gelu", "gp_no_nme"): 4.0,
              ("gelu", "gp_nme_act"): 0.7, ("gelu_nme_ablated", "gp"): 0.4}
DRAW2 = {"data.train_split": "train[4000:8000]", "data.label_noise_seed": 1}
# At the paper's scales (its recipes: clean labels, configs/cifar10_wrn28_10.py and
# configs/imagenet_resnet50.py) every arm over the full-scale rho grid, the arms without
# NME_rest in their update over a wider one (their best lay 2-10x higher here), 2 seeds
# (the paper's); the probes of this study at 4 points of each run, on 512 examples.
PAPER_RHOS = common.RHOS  # 0.01-0.5
PAPER_WIDE_RHOS = common.RHOS + (1.0, 2.0)
PAPER_PROBES = 4
# ImageNet's batch of 4,096 on one node of 8 GPUs with 80 GiB each: the smallest number of
# microbatches whose training step fits, per method (the dry run's --dry_run_memory_gib=80;
# docs/imagenet.md, "The paper's batch on one node"). Other nodes: edit, or dry-run a point.
PAPER_ACCUM = {"imagenet": {"none": 2, "sam": 2, "gp": 4, "gp_no_nme": 4, "gp_nme_act": 4}}
SERIES_RHO = 0.3
SURROGATES = ("relu_synthetic_nme", "relu_spike_nme")
SURROGATE_BETA = 1.0
PROBE_EPOCHS = 10  # probes at steps 0, 310, 620, 930: about 60 s of a 3-minute run
PLOT = {"kind": "final", "x": "rho", "lines": ("activation", "method"), "symlog_x": 0.05,
        "zoom_range": (81.5, 85.5), "zoom_x": (0.08, 0.6),  # the arms' best, far above plain
        "contrasts": [["method", "gp", "sam"], ["method", "gp", "gp_no_nme"],
                      ["method", "gp", "gp_nme_act"], ["method", "gp_nme_act", "gp_no_nme"],
                      ["activation", "gelu", "gelu_nme_ablated"],
                      ["activation", "relu_synthetic_nme", "relu"],
                      ["activation", "relu_spike_nme", "relu"],
                      ["activation", "gelu", "relu"]],
        "series": ["nme_split/activation_norm_share", "nme_split/gauss_newton_to_nme_norm",
                   "dead_units/mean", "stability/ratio"],
        "series_at": [0.3],  # at or next to each arm's best (0.2-0.4; not gp_no_nme's)
        # the series' runs split the NME in three: each part's share of ||NME g^||^2
        "scales": {"series": {"series": [
            "nme_split/activation_squared_norm_share",
            "nme_split/normalization_squared_norm_share",
            "nme_split/between_squared_norm_share", "nme_split/gauss_newton_to_nme_norm"]}}}


def surrogate(name: str) -> list[Point]:
    return [Point.of({"activation": name, "beta": SURROGATE_BETA},
                     {"model.activation": name, "model.beta": SURROGATE_BETA})]


def arms(rhos_of) -> list[tuple[list[Point], dict]]:
    """(activation points, {method: rhos}) of every arm; rhos_of(activation, method)."""
    return [(surrogate(name) if name in SURROGATES else activations((name,)),
             {m: () if m == "none" else rhos_of(name, m) for m in arm_methods})
            for name, arm_methods in ARMS]


def with_study_probes(c):
    """The probes every run of this study carries (see the module docstring)."""
    c.probes.every_steps = PROBE_EPOCHS * common.epoch_steps(c)
    c.probes.kinds = ("hessian", "gauss_newton", "nme", "nme_activation", "nme_rest")
    c.probes.lanczos_steps = 10
    c.probes.top_k = 3
    c.probes.bottom_k = 3
    c.probes.trace_probes = 0
    c.probes.alignment = True
    return c


def base(scale: str):
    if scale in PAPER_SCALES:
        c = with_study_probes(common.base(scale))
        c.probes.every_steps = max(1, int(c.num_epochs * common.epoch_steps(c)) // PAPER_PROBES)
        c.probes.batch_size = 512
        return c
    c = regime.base("pilot")
    if scale == "warmup":  # the earlier study's no-BatchNorm recipe, with the longer warmup
        c.model.batch_norm = False
        c.optimizer.learning_rate = common.NO_BN_LEARNING_RATE
    else:
        c.data.augment = "none"
        c.data.label_noise = 0.25
    c = with_study_probes(c)
    if scale == "series":
        c.probes.kinds += ("nme_normalization", "nme_between")
    if scale == "draw2":
        c.data.train_split = DRAW2["data.train_split"]
        c.data.label_noise_seed = DRAW2["data.label_noise_seed"]
    return c


def grid(scale: str):
    if scale == "warmup":
        return product(activations(("relu",)), methods({"sam": (1.0,), "gp": (1.0,)}),
                       seeds((0, 1, 2)))
    if scale == "study":
        return [point for acts, spec in arms(lambda a, m: STUDY_RHOS[a, m])
                for point in product(acts, methods(spec), seeds(STUDY_SEEDS))]
    if scale == "series":
        return [point for acts, spec in arms(lambda a, m: (SERIES_RHO,))
                if acts[0].tag_dict["activation"] not in SURROGATES
                for point in product(acts, methods({m: r for m, r in spec.items()
                                                    if m != "gp_no_nme"}), seeds((0, 1, 2)))]
    if scale in PAPER_SCALES:
        accum = PAPER_ACCUM.get(scale, {})
        return [Point(point.tags, point.overrides + (
                    (("grad_accum_steps", accum[point.tag_dict["method"]]),)
                    if point.tag_dict["method"] in accum else ()))
                for acts, spec in arms(lambda a, m: PAPER_WIDE_RHOS
                                       if (a, m) in WIDE_BRACKET else PAPER_RHOS)
                for point in product(acts, methods(spec), common.seed_axis(scale))]
    if scale == "draw2":
        return [point for acts, spec in arms(lambda a, m: (DRAW2_RHOS.get((a, m)),))
                if acts[0].tag_dict["activation"] not in SURROGATES
                for point in product(acts, methods(spec), seeds(STUDY_SEEDS))]
    return [point for acts, spec in arms(lambda a, m: WIDE_RHOS if (a, m) in WIDE_BRACKET
                                         else RHOS)
            for point in product(acts, methods(spec), seeds((0,)))]


def get_config(arg: str = "bracket"):
    return experiment_config(base, grid, SCALES, arg)
