"""Writes image datasets in the TFDS array_record layout, offline.

`tfds.data_source(name, data_dir=...)` reads what this writes exactly as it
reads a dataset built by `tfds build`: same directory layout
(`data_dir/name/version/`), same `dataset_info.json` and the same features.
Images are passed as PIL images or encoded bytes, so no TensorFlow is needed
(TFDS encodes numpy images with TensorFlow, PIL images with PIL).

Used for the embedded digits set, for Fashion-MNIST from its IDX files, and
by the tests to build small datasets with the structure of CIFAR or ImageNet.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core import registered, shuffle

Example = Mapping[str, Any]


def registered_features(name: str) -> tuple[tfds.features.FeaturesDict, str]:
    """Features and version of the registered TFDS dataset `name` (e.g. 'cifar10')."""
    cls = tfds.builder_cls(name)
    with tempfile.TemporaryDirectory() as tmp:
        return cls(data_dir=tmp).info.features, str(cls.VERSION)


def encode_image(image: np.ndarray, fmt: str = "png") -> PIL.Image.Image | bytes:
    """A uint8 HWC array as something TFDS can store without TensorFlow."""
    array = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    pil = PIL.Image.fromarray(np.asarray(array, np.uint8))
    if fmt == "png":
        return pil
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt.upper(), quality=95)
    return buffer.getvalue()


def write_dataset(
    name: str,
    data_dir: str,
    splits: Mapping[str, Callable[[], Iterable[Example]]],
    features: tfds.features.FeaturesDict,
    version: str,
    description: str = "",
    supervised_keys: tuple[str, str] | None = ("image", "label"),
) -> str:
    """Writes `splits` (split name -> callable yielding examples) and returns the dataset dir.

    TFDS writes into a temporary directory and renames it when complete, so
    an interrupted preparation never leaves a dataset that looks finished.
    """
    with registered.skip_registration():

        class _Builder(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version(version)

            def _info(self) -> tfds.core.DatasetInfo:
                return tfds.core.DatasetInfo(
                    builder=self,
                    description=description,
                    features=features,
                    supervised_keys=supervised_keys,
                    disable_shuffling=True,  # keep the given order (e.g. the IDX files')
                )

            def _split_generators(self, dl_manager: Any) -> dict:
                return {split: self._generate_examples(make) for split, make in splits.items()}

            def _generate_examples(self, make: Callable[[], Iterable[Example]]):
                yield from enumerate(make())

        _Builder.name = name
    builder = _Builder(data_dir=data_dir, file_format="array_record")
    logging.info("preparing %s %s in %s (once)", name, version, data_dir)
    tfds.disable_progress_bar()
    # TFDS buffers a split in memory up to 1 GB and spills to disk through
    # TensorFlow beyond it; this project does not install TensorFlow, so the
    # buffer may grow to half of the machine's memory instead.
    limit = shuffle.MAX_MEM_BUFFER_SIZE
    shuffle.MAX_MEM_BUFFER_SIZE = max(limit, writable_in_memory())
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(verify_ssl=False)
        )
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = limit
    return str(builder.data_dir)


def writable_in_memory() -> int:
    """Bytes of one split `write_dataset` can hold: half of the machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
