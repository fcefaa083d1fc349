"""ImageNet (ILSVRC-2012), ResNet-50 with the ImageNet stem, bf16 compute.

The SAM paper trains ResNet-50 on ImageNet with SGD + momentum, cosine
decay and label smoothing 0.1; its exact values are not restated here.
This file uses the standard large-batch ResNet-50 recipe: global batch
4096, Nesterov momentum 0.9, learning rate 0.1 x 4096/256 = 1.6 (linear
scaling, Goyal et al., 2017) after 5 warmup epochs, cosine decay to 0,
weight decay 1e-4 on kernels, label smoothing 0.1, 90 epochs, Inception
crop + flip for training, resize 256 + centre crop 224 for evaluation.
Every value is a config field; change it to match another recipe.

Needs the TFDS `imagenet2012` dataset built as array_record (docs/configuring.md, "Datasets").
The mesh shards parameters over `fsdp` when it is set > 1.
"""

from nme_train.base_config import base_config


def get_config(variant: str = "relu"):
    c = base_config()
    c.data.name = "imagenet2012"
    c.data.augment = "inception_crop_flip"
    c.data.image_size = 224
    c.data.cache = False
    c.data.num_threads = 2  # per worker process: 8 threads cost 10-17% more CPU per image
    #                         than 1-2 (docs/imagenet.md)
    c.data.prefetch = 8
    c.data.num_workers = 8  # per process; JPEG decoding dominates the host work
    c.model.name = "resnet"
    c.model.depth = 50
    c.model.width = 64
    c.model.stem = "imagenet"
    c.model.activation = variant
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.batch_size = 4096
    c.eval_batch_size = 4096
    c.num_epochs = 90
    c.label_smoothing = 0.1
    c.optimizer.name = "nesterov"
    c.optimizer.learning_rate = 1.6
    c.optimizer.weight_decay = 1e-4
    c.optimizer.weight_decay_on = "kernels"
    c.optimizer.warmup_epochs = 5.0
    c.log_every_steps = 100
    c.eval_every_steps = 3120  # about every 10 epochs (312 steps per epoch)
    return c
