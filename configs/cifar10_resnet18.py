"""CIFAR-10, ResNet-18 with the CIFAR stem (3x3 convolution, no max pool), 11.2 M parameters.

Same recipe as configs/cifar10_wrn28_10.py (`configs.recipes.sam_cifar`: SAM reference
code). Needs the TFDS `cifar10` dataset. Variant `:gelu` swaps the activation.
"""

from configs.recipes import sam_cifar
from nme_train.base_config import base_config


def get_config(variant: str = "relu"):
    c = sam_cifar(base_config())
    c.model.name = "resnet"
    c.model.depth = 18
    c.model.width = 64
    c.model.stem = "cifar"
    c.model.activation = variant
    return c
