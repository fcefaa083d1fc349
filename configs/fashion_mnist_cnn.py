"""Fashion-MNIST, a small CNN: the paper's small-scale dataset, trainable on a laptop CPU.

The NME paper gives no Fashion-MNIST recipe; this one is ours: two conv
stages (32, 64 channels, 3x3, BatchNorm, 2x2 average pooling), a 256-unit
dense layer, batch 128, Nesterov momentum 0.9, learning rate 0.05 after one
warmup epoch with cosine decay, weight decay 5e-4 on kernels, 15 epochs,
no augmentation. Measured result: docs/benchmarks.md ("Fashion-MNIST CNN").

Prepare the data once (Debian package dataset-fashion-mnist):
    nme-prepare-data fashion_mnist --from /usr/share/datasets/fashion-mnist
"""

from nme_train.base_config import base_config


def get_config(variant: str = "relu"):
    c = base_config()
    c.data.name = "fashion_mnist"
    c.model.name = "cnn"
    c.model.features = (32, 64)
    c.model.hidden = (256,)
    c.model.activation = variant  # relu | gelu | beta_gelu
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.num_epochs = 15
    c.optimizer.name = "nesterov"
    c.optimizer.learning_rate = 0.05
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_epochs = 1.0
    c.log_every_steps = 200
    c.eval_every_steps = 2340  # every 5 epochs (468 steps per epoch)
    return c
