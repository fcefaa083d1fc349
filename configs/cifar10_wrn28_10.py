"""CIFAR-10, WideResNet-28-10: the CIFAR model of the SAM paper (Foret et al., 2021).

Recipe of the SAM reference code for WRN-28-10 (`sam_cifar` in
configs/recipes.py): batch 256, Nesterov 0.9, lr 0.1 with cosine decay,
weight decay 5e-4 on all parameters, gradient clipping at norm 5, 200 epochs,
pad-crop-flip. The NME paper gives no recipe of its own; this is the
documented stand-in.

Needs the TFDS `cifar10` dataset (array_record) under config.data.data_dir.
Variant `:gelu` (or `:beta_gelu`) swaps the activation.
"""

from configs.recipes import sam_cifar
from nme_train.base_config import base_config
from nme_train.models import use_model


def get_config(variant: str = "relu"):
    c = sam_cifar(base_config())
    use_model(c, "wide_resnet", depth=28, widen_factor=10)  # 36.5 M parameters
    c.model.activation = variant
    return c
