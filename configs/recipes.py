"""Training recipes shared by several configs (each applied to a base config)."""

from __future__ import annotations

import ml_collections


def sam_cifar(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The CIFAR recipe of the SAM reference code (Foret et al., 2021), applied to `c`.

    Batch 256, SGD with Nesterov momentum 0.9, learning rate 0.1 with cosine
    decay and no warmup, weight decay 5e-4 on every parameter (BatchNorm
    included, which that code found matters), gradient clipping at global
    norm 5, 200 epochs, pad-crop-flip augmentation.
    """
    c.data.name = "cifar10"
    c.data.augment = "pad_crop_flip"
    c.batch_size = 256
    c.eval_batch_size = 1000
    c.num_epochs = 200
    c.optimizer.name = "nesterov"
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 5e-4
    c.optimizer.weight_decay_on = "all"
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.grad_clip_norm = 5.0
    c.log_every_steps = 100
    c.eval_every_steps = 1950  # every 10 epochs (195 steps per epoch)
    return c
