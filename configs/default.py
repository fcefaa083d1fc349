"""Default: a small CNN on the embedded digits dataset (well under a minute on 2 CPU cores).

    python -m nme_train.main --config=configs/default.py --workdir=/tmp/digits

Variants: `configs/default.py:mlp` (a two-layer MLP), `configs/default.py:resnet`
(a narrow CIFAR-stem ResNet-18). All fields and their meaning:
nme_train/base_config.py. Override any on the command line, e.g.
`--config.optimizer.learning_rate=0.05 --config.model.activation=gelu`.
"""

from nme_train.base_config import base_config

VARIANTS = ("cnn", "mlp", "resnet")


def get_config(variant: str = "cnn"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    c = base_config()
    c.data.name = "digits"  # 1,500 train / 297 test 8x8 images, prepared offline
    c.model.name = {"cnn": "cnn", "mlp": "mlp", "resnet": "resnet"}[variant]
    c.model.features = (32, 64)
    c.model.hidden = (128,) if variant == "cnn" else (256, 256)
    c.model.batch_norm = variant != "mlp"
    c.model.depth, c.model.width, c.model.stem = 18, 16, "cifar"
    c.batch_size = 128
    c.num_epochs = 40  # 440 steps
    c.optimizer.name = "nesterov"
    c.optimizer.learning_rate = 0.05
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_epochs = 1.0
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.checkpoint.every_steps = 100
    return c
