"""CIFAR-10, ResNet-18 with the CIFAR stem (3x3 convolution, no max pool).

Same recipe as configs/cifar10_wrn28_10.py (SAM reference code): batch 256,
Nesterov 0.9, lr 0.1 cosine, weight decay 5e-4 on all parameters, clipping
at norm 5, 200 epochs, pad-crop-flip. Needs the TFDS `cifar10` dataset.
"""

from nme_train.base_config import base_config


def get_config(variant: str = "relu"):
    c = base_config()
    c.data.name = "cifar10"
    c.data.augment = "pad_crop_flip"
    c.model.name = "resnet"
    c.model.depth = 18
    c.model.width = 64
    c.model.stem = "cifar"
    c.model.activation = variant
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
    c.eval_every_steps = 1950
    return c
