"""The scales the paper's experiments run at, and the sweep axes they share.

Scales (the NME paper gives no recipes; these are the SAM paper's standard
models with the recipes documented in each base config file):

  imagenet       ResNet-50, configs/imagenet_resnet50.py (90 epochs, batch 4096)
  cifar10        WideResNet-28-10, configs/cifar10_wrn28_10.py (200 epochs, batch 256)
  fashion_mnist  the CNN of configs/fashion_mnist_cnn.py (15 epochs, batch 128)
  study          Fashion-MNIST at the budget of a 2-core CPU: a narrower CNN
                 (16 and 32 channels, 128 hidden units), STUDY_EPOCHS epochs;
                 the small-scale study of docs/results.md

Seeds: the paper used 2 per point; so do these grids.
"""

from configs import cifar10_wrn28_10, fashion_mnist_cnn, imagenet_resnet50

FULL_SCALES = ("imagenet", "cifar10", "fashion_mnist")
SCALES = FULL_SCALES + ("study",)
SEEDS = (0, 1)
STUDY_EPOCHS = 2

# Hyperparameter values swept at full scale. The paper plots accuracy
# against rho and sigma^2 without listing its values; these span the SAM
# paper's useful radii (0.05 on ImageNet, 0.05-0.1 on CIFAR) by a factor of
# 5-10 on either side, and the weight-noise variances from harmless to
# harmful for networks of this size.
RHOS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
SIGMA2S = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
BETAS = (1.0, 2.0, 4.0, 8.0, 16.0, 64.0)
# The small-scale study: few values, chosen to reach the regimes where the
# paper's curves separate (large rho, large sigma^2, beta towards ReLU).
STUDY_RHOS = (0.1, 0.5)
STUDY_SIGMA2S = (1e-3, 1e-2)
STUDY_BETAS = (1.0, 8.0, 64.0)


def base(scale: str, activation: str = "relu"):
    """The training config of `scale` with `activation` (regularizers: none)."""
    if scale == "imagenet":
        return imagenet_resnet50.get_config(activation)
    if scale == "cifar10":
        return cifar10_wrn28_10.get_config(activation)
    c = fashion_mnist_cnn.get_config(activation)
    if scale == "study":
        c.model.features = (16, 32)
        c.model.hidden = (128,)
        c.num_epochs = STUDY_EPOCHS
        c.log_every_steps = 200
        c.eval_every_steps = 0  # the final evaluation only
        c.checkpoint.every_steps = 500
        c.checkpoint.max_to_keep = 1
    return c


def study(scale: str, full, small):
    """`small` at the study scale, `full` otherwise."""
    return small if scale == "study" else full


def epoch_steps(config) -> int:
    """Training steps per epoch of `config` (its dataset's training split)."""
    sizes = {"imagenet2012": 1_281_167, "cifar10": 50_000, "cifar100": 50_000,
             "fashion_mnist": 60_000, "digits": 1_500}
    return sizes[config.data.name] // config.batch_size


def with_trace_probes(c, per_run: int = 10):
    """Hutchinson traces of H, G and NME about `per_run` times over training (E6)."""
    total = int(c.num_epochs * epoch_steps(c))
    c.probes.every_steps = max(1, total // per_run)
    c.probes.kinds = ("hessian", "gauss_newton", "nme")
    c.probes.lanczos_steps = 0
    c.probes.trace_probes = 10
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
