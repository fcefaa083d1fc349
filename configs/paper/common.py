"""The scales the paper's experiments run at, and the sweep axes they share.

Scales (the NME paper gives no recipes; these are the SAM paper's standard
models with the recipes documented in each base config file):

  imagenet       ResNet-50, configs/imagenet_resnet50.py (90 epochs, batch 4096)
  cifar10        WideResNet-28-10, configs/cifar10_wrn28_10.py (200 epochs, batch 256)
  fashion_mnist  the CNN of configs/fashion_mnist_cnn.py (15 epochs, batch 128)
  study          Fashion-MNIST at the budget of a 2-core CPU, in a regime where
                 plain training nearly interpolates: the first
                 STUDY_TRAIN_EXAMPLES training images, STUDY_EPOCHS epochs, a
                 narrower CNN (16 and 32 channels, 128 hidden units), with and
                 without BatchNorm (the `bn` axis); the small-scale study of
                 docs/results.md

Seeds: the paper used 2 per point, and so do the full-scale grids; the study
uses 3, so that a difference between two curves can be set against its
standard error.
"""

import re

from configs import cifar10_wrn28_10, fashion_mnist_cnn, imagenet_resnet50
from nme_train.sweeps.grids import Point, seeds

FULL_SCALES = ("imagenet", "cifar10", "fashion_mnist")
SCALES = FULL_SCALES + ("study",)
SEEDS = (0, 1)
STUDY_SEEDS = (0, 1, 2)
# The study's budget: 4,000 training images for 30 epochs (930 steps of 128).
# Plain training then ends near interpolation (training loss about 0.03 with
# and without BatchNorm), where the regularizers trade training loss for
# generalisation, as in the paper's full-length runs.
STUDY_TRAIN_EXAMPLES = 4000
STUDY_EPOCHS = 30
# Without BatchNorm the CNN fits more slowly at the BatchNorm recipe's 0.05
# (training loss 0.087 against 0.024 after 30 epochs on 5,000 images); at
# 0.1 it reaches 0.032. The study's no-BatchNorm points use 0.1.
NO_BN_LEARNING_RATE = 0.1

# Hyperparameter values swept at full scale. The paper plots accuracy
# against rho and sigma^2 without listing its values; these span the SAM
# paper's useful radii (0.05 on ImageNet, 0.05-0.1 on CIFAR) by a factor of
# 5-10 on either side, and the weight-noise variances from harmless to
# harmful for networks of this size.
RHOS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
SIGMA2S = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
BETAS = (1.0, 2.0, 4.0, 8.0, 16.0, 64.0)
# The small-scale study: few values, chosen to reach the regimes where the
# paper's curves separate (large rho, large sigma^2, beta towards ReLU). The
# rho grid runs up to where training breaks: at 1 every arm has lost at least
# 5 points, several train at chance or diverge (at 3, tried with seed 0, all
# eight arms ended at 10-11%).
STUDY_RHOS = (0.1, 0.3, 0.5, 1.0)
STUDY_SIGMA2S = (1e-3, 1e-2)
STUDY_BETAS = (1.0, 8.0, 64.0)
# Where E1 separates ReLU from GELU under the penalty: E2 and E3 sweep these.
STUDY_SEPARATION_RHOS = (0.5, 1.0)
# The surrogate second derivatives of E3 (beta-GELU's, beta = 1 is GELU's).
SYNTHETIC_BETAS = (1.0, 4.0, 16.0)


def base(scale: str, activation: str = "relu"):
    """The training config of `scale` with `activation` (regularizers: none)."""
    if scale == "imagenet":
        return imagenet_resnet50.get_config(activation)
    if scale == "cifar10":
        return cifar10_wrn28_10.get_config(activation)
    c = fashion_mnist_cnn.get_config(activation)
    if scale == "study":
        c.data.train_split = f"train[:{STUDY_TRAIN_EXAMPLES}]"
        c.model.features = (16, 32)
        c.model.hidden = (128,)
        c.num_epochs = STUDY_EPOCHS
        c.log_every_steps = 3 * epoch_steps(c)
        c.eval_every_steps = 0  # the final evaluation only
        c.checkpoint.every_steps = 500
        c.checkpoint.max_to_keep = 1
    return c


def seed_axis(scale: str) -> list[Point]:
    """The seeds of every point: SEEDS at full scale, STUDY_SEEDS in the study."""
    return seeds(study(scale, SEEDS, STUDY_SEEDS))


def norm_axis(scale: str, variants: tuple[bool, ...] = (True, False)) -> list[Point]:
    """The study's CNN with BatchNorm (`bn=true`) and without (`bn=false`), of `variants`.

    The full-scale models keep their BatchNorm: the axis is a single point
    without tags there.
    """
    if scale != "study":
        return [Point(())]
    points = {True: Point.of({"bn": True}, {"model.batch_norm": True}),
              False: Point.of({"bn": False}, {"model.batch_norm": False,
                                              "optimizer.learning_rate": NO_BN_LEARNING_RATE})}
    return [points[v] for v in variants]


def synthetic_nme(betas) -> list[Point]:
    """ReLU with the second derivative of beta-GELU injected (E3), one point per beta."""
    return [Point.of({"activation": "relu_synthetic_nme", "beta": float(b)},
                     {"model.activation": "relu_synthetic_nme", "model.beta": float(b)})
            for b in betas]


def study(scale: str, full, small):
    """`small` at the study scale, `full` otherwise."""
    return small if scale == "study" else full


def epoch_steps(config) -> int:
    """Training steps per epoch of `config` (its training split, or a `[M:N]` slice of it)."""
    sizes = {"imagenet2012": 1_281_167, "cifar10": 50_000, "cifar100": 50_000,
             "fashion_mnist": 60_000, "digits": 1_500}
    size = sizes[config.data.name]
    sliced = re.fullmatch(r"\w+\[(\d*):(\d+)\]", config.data.train_split)
    if sliced:
        size = min(size, int(sliced.group(2))) - int(sliced.group(1) or 0)
    return size // config.batch_size


def with_trace_probes(c, per_run: int = 10, trace_probes: int = 10):
    """Hutchinson traces of H, G and NME (and per layer) about `per_run` times in training."""
    total = int(c.num_epochs * epoch_steps(c))
    c.probes.every_steps = max(1, total // per_run)
    c.probes.kinds = ("hessian", "gauss_newton", "nme")
    c.probes.lanczos_steps = 0
    c.probes.trace_probes = trace_probes
    c.probes.batch_size = min(c.batch_size, 512)
    c.probes.alignment = True
    return c


def with_sparsity_probe(c):
    """The activation-sparsity probe (E9) at the start and the end of training only."""
    c.probes.every_steps = 10**9  # > any run: probes at step 0 and the final step
    c.probes.kinds = ()
    c.probes.lanczos_steps = 0
    c.probes.trace_probes = 0
    c.probes.alignment = False
    c.probes.batch_size = min(c.batch_size, 512)
    return c
