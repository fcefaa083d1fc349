"""The pilot of the decisive study: a Fashion-MNIST regime in which SAM helps.

The earlier study (scale `study` of configs/paper/common.py: 4,000 images,
30 epochs, no augmentation, one warmup epoch) had no benefit for any
regularizer to lose: SAM's best was +0.31 points at 2.3 standard errors. A
claim of the form "removing the NME removes the penalty's benefit" needs a
regime where the benefit exists, so this pilot looks for one before any
contrast is run: SAM over a rho grid from well below its best to where it
fails, against plain training, paired by seed (same initialisation, data
order and augmentation), in candidate regimes of about 3 minutes a run on
one core, all of 930 steps:

  a4k    the first 4,000 training images, 30 epochs, random crop (4-pixel
         zero padding) and horizontal flip, a 5-epoch warmup. Seed 0 showed
         it underfits (final training loss 0.35, training accuracy 86.6%,
         test 86.0%) and SAM lost at every rho (-0.6 points at 0.02, -14 at
         0.5), so it keeps 2 seeds, enough to reject it
  n4k    the same without augmentation (plain training interpolates); 3
         seeds, which showed no accuracy benefit (+0.05 points at best)
  f4k    the same with horizontal flips only (a milder augmentation)
  l4k    n4k with 25% symmetric label noise (a fixed quarter of the 4,000
         images relabelled to another class): the regime in which SAM's
         benefit is largest in the SAM paper (its robustness to noisy
         labels), added when seed 0 of n4k and f4k showed SAM's best within
         0.15 points of plain training

A fourth candidate, the first 12,000 images for 10 epochs with crop and
flip, underfit more (training loss 0.43 at step 837, seed 0) and was dropped
after its first run.

All use the study's CNN (16 and 32 channels, a 128-unit dense layer) with
BatchNorm, ReLU, Nesterov momentum 0.9 at learning rate 0.05, cosine decay,
weight decay 5e-4. The warmup is several epochs long so that no run dies
in a short ramp to its peak learning rate (docs/results.md: the earlier
study's collapses were dead networks within about 93 steps).

    nme-sweep --config configs/paper/regime.py:pilot --workdir study/pilot --jobs 2
    nme-summarize study/pilot --out docs/results
"""

from configs.paper import common
from nme_train.sweeps.grids import Point, experiment_config, methods, product, seeds

SCALES = ("pilot",)
PILOT_SEEDS = (0, 1, 2, 3, 4)
PILOT_RHOS = (0.02, 0.05, 0.1, 0.2, 0.5)
REGIMES = {  # name -> (seeds, config overrides); every regime: train[:4000], 30 epochs
    # (listed in the order they run: the leading candidate first)
    "l4k": (PILOT_SEEDS, {"data.augment": "none", "data.label_noise": 0.25}),
    "f4k": (PILOT_SEEDS, {"data.augment": "flip"}),
    "n4k": ((0, 1, 2), {"data.augment": "none"}),
    "a4k": ((0, 1), {"data.augment": "pad_crop_flip"}),
}
PLOT = {"kind": "final", "x": "rho", "lines": ("method",), "panels": "regime",
        "symlog_x": 0.02, "zoom": 3, "contrasts": [["method", "sam", "none"]]}


def base(scale: str):
    c = common.base("study")  # train[:4000], 30 epochs, the narrow CNN
    c.model.batch_norm = True
    c.optimizer.warmup_epochs = 5.0
    return c


def grid(scale: str):
    return [point for name, (regime_seeds, overrides) in REGIMES.items()
            for point in product([Point.of({"regime": name}, overrides)],
                                 methods({"none": (), "sam": PILOT_RHOS}), seeds(regime_seeds))]


def get_config(arg: str = "pilot"):
    return experiment_config(base, grid, SCALES, arg)
