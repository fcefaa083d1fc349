"""Offline preparation of the datasets that can be had without a download.

- `digits`: scikit-learn's handwritten digits (1,797 real 8x8 grey images of
  the UCI "optical recognition of handwritten digits" set, shipped inside
  scikit-learn). Fixed split: a permutation with seed 0, the first 1,500 for
  training and the other 297 for testing. Pixel values 0..16 are stored as
  uint8 round(v * 255 / 16), which keeps all 17 levels distinct.
- `fashion_mnist`: the original IDX files (Debian's `dataset-fashion-mnist`
  installs them in /usr/share/datasets/fashion-mnist), written as the TFDS
  `fashion_mnist` dataset with the features of the TFDS catalogue.
- a synthetic `imagenet2012`: procedural JPEGs with ImageNet's sizes, to
  measure and exercise the ImageNet input pipeline and trainer offline.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from collections.abc import Iterator

import numpy as np
import PIL.Image
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


SYNTHETIC_ASPECTS = ((1.0, 0.1), (4 / 3, 0.6), (1.5, 0.3))  # (long/short side, probability)
SYNTHETIC_NOISE = 12.0  # pixel noise std: sets the JPEG size (~110 KB at 400-500 px, q=90)


def synthetic_jpeg(seed: int, split: int, index: int, label: int,
                   short_side: tuple[int, int] = (400, 500), store_short_side: int | None = None,
                   quality: int = 90) -> bytes:
    """One procedural JPEG with ImageNet's size distribution, a pure function of its arguments.

    The short side is uniform in `short_side`, the aspect ratio 1, 4:3 or 3:2
    (a quarter of the images in portrait). Content: a smooth colour field
    drawn from (seed, label), so the class can be learnt, plus a per-image
    field at 1/24 of the resolution and pixel noise, which sets the encoded
    size near ImageNet's (~110 KB). `store_short_side` resizes before
    encoding, as pipelines that store ImageNet pre-shrunk do.
    """
    rng = np.random.default_rng([seed, split, index])
    short = int(rng.integers(short_side[0], short_side[1] + 1))
    ratios, weights = zip(*SYNTHETIC_ASPECTS)
    long = int(round(short * ratios[rng.choice(len(ratios), p=weights)]))
    h, w = (long, short) if rng.random() < 0.25 else (short, long)
    base = np.random.default_rng([seed, 1 << 20, label]).integers(0, 256, (3, 4, 3), np.uint8)
    detail = rng.integers(0, 256, (h // 24 + 1, w // 24 + 1, 3), np.uint8)
    field = [np.asarray(PIL.Image.fromarray(a).resize((w, h), PIL.Image.BICUBIC), np.float32)
             for a in (base, detail)]
    noise = rng.normal(0.0, SYNTHETIC_NOISE, (h, w, 3)).astype(np.float32)
    image = PIL.Image.fromarray(np.clip(0.6 * field[0] + 0.4 * field[1] + noise, 0, 255)
                                .astype(np.uint8))
    if store_short_side is not None and min(h, w) > store_short_side:
        scale = store_short_side / min(h, w)
        image = image.resize((round(w * scale), round(h * scale)), PIL.Image.BILINEAR,
                             reducing_gap=2.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _synthetic_example(args: tuple) -> dict:
    split_name, split, index, seed, num_classes, short_side, store = args
    label = index % num_classes
    return {"file_name": f"synthetic_{split_name}_{index:08d}.JPEG", "label": label,
            "image": synthetic_jpeg(seed, split, index, label, short_side, store)}


def prepare_synthetic_imagenet(data_dir: str, num_train: int = 10_000,
                               num_validation: int = 1_000, num_classes: int = 1000,
                               short_side: tuple[int, int] = (400, 500),
                               store_short_side: int | None = None, seed: int = 0,
                               processes: int = 1) -> str:
    """Writes a synthetic `imagenet2012` (the catalogue's features and version) under `data_dir`.

    Same files, features, splits and JPEG sizes as ImageNet, procedural
    content (`synthetic_jpeg`): what the input pipeline and the trainer see
    is ImageNet-shaped, what a model learns from it is not. Labels cycle
    through the first `num_classes` classes. `processes` > 1 encodes in
    worker processes; the dataset is the same for any number.
    """
    features, version = registered_features("imagenet2012")

    def examples(split_name: str, split: int, n: int):
        def make() -> Iterator[dict]:
            jobs = ((split_name, split, i, seed, num_classes, tuple(short_side),
                     store_short_side) for i in range(n))
            if processes <= 1:
                yield from map(_synthetic_example, jobs)
                return
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(processes) as pool:
                yield from pool.imap(_synthetic_example, jobs, chunksize=16)
        return make

    return write_dataset(
        "imagenet2012", data_dir,
        {"train": examples("train", 0, num_train),
         "validation": examples("validation", 1, num_validation)},
        features, version,
        description=(f"SYNTHETIC ImageNet-shaped JPEGs (nme_train), not ImageNet: seed {seed}, "
                     f"{num_classes} classes, short side {short_side[0]}-{short_side[1]} px"
                     + (f", stored at short side {store_short_side}" if store_short_side
                        else "") + "."),
    )
