"""Offline preparation of the datasets that can be had without a download.

- `digits`: scikit-learn's handwritten digits (1,797 real 8x8 grey images of
  the UCI "optical recognition of handwritten digits" set, shipped inside
  scikit-learn). Fixed split: a permutation with seed 0, the first 1,500 for
  training and the other 297 for testing. Pixel values 0..16 are stored as
  uint8 round(v * 255 / 16), which keeps all 17 levels distinct.
- `fashion_mnist`: the original IDX files (Debian's `dataset-fashion-mnist`
  installs them in /usr/share/datasets/fashion-mnist), written as the TFDS
  `fashion_mnist` dataset with the features of the TFDS catalogue.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from nme_train.data.tfds_writer import encode_image, registered_features, write_dataset

DIGITS_NAME = "digits"
DIGITS_VERSION = "1.0.0"
DIGITS_NUM_TRAIN = 1500
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:DIGITS_NUM_TRAIN], order[DIGITS_NUM_TRAIN:]
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def _examples(images: np.ndarray, labels: np.ndarray) -> Iterator[dict]:
    for image, label in zip(images, labels):
        yield {"image": encode_image(image), "label": int(label)}


def prepare_digits(data_dir: str) -> str:
    """Writes the embedded digits dataset under `data_dir` (idempotent); returns its dir."""
    done = os.path.join(data_dir, DIGITS_NAME, DIGITS_VERSION, "dataset_info.json")
    if os.path.exists(done):
        return os.path.dirname(done)
    arrays = _digits_arrays()
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(num_classes=10),
    })
    return write_dataset(
        DIGITS_NAME,
        data_dir,
        {split: (lambda a=a: _examples(*a)) for split, a in arrays.items()},
        features,
        DIGITS_VERSION,
        description="scikit-learn handwritten digits, 8x8, fixed 1500/297 split (seed 0).",
    )


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4]!r})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {np.prod(shape)} values, found {array.size}")
    return array.reshape(shape)


def _find_idx(source_dir: str, stem: str) -> str:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(source_dir, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"{stem}[.gz] not found in {source_dir}; on Debian `apt-get install "
        f"dataset-fashion-mnist` puts the IDX files in {FASHION_MNIST_DEBIAN_DIR}"
    )


def prepare_fashion_mnist(source_dir: str, data_dir: str) -> str:
    """Converts the Fashion-MNIST IDX files in `source_dir` into TFDS `fashion_mnist`."""
    features, version = registered_features("fashion_mnist")
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find_idx(source_dir, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(source_dir, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
        splits[split] = lambda im=images[..., None], lab=labels: _examples(im, lab)
    return write_dataset(
        "fashion_mnist", data_dir, splits, features, version,
        description="Fashion-MNIST (Xiao et al., 2017) from the original IDX files.",
    )
