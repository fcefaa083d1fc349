"""CIFAR-10, WideResNet-28-10: the CIFAR model of the SAM paper (Foret et al., 2021).

Recipe of the SAM reference code for WRN-28-10 (its README and defaults):
batch 256, SGD with Nesterov momentum 0.9, learning rate 0.1 with cosine
decay and no warmup, weight decay 5e-4 applied to every parameter
(BatchNorm included, which that code found matters), gradient clipping at
global norm 5, 200 epochs, pad-crop-flip augmentation. The NME paper gives
no recipe of its own; this is the documented stand-in.

Needs the TFDS `cifar10` dataset (array_record) under config.data.data_dir.
Variant `:gelu` swaps the activation.
"""

from nme_train.base_config import base_config


def get_config(variant: str = "relu"):
    c = base_config()
    c.data.name = "cifar10"
    c.data.augment = "pad_crop_flip"
    c.model.name = "wide_resnet"
    c.model.depth = 28
    c.model.width = 10
    c.model.activation = variant  # relu | gelu | beta_gelu
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
