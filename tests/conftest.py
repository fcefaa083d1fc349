"""Test setup: 8 fake CPU devices, a shared TFDS data dir, and small dataset builders."""

import os

# Must happen before jax is imported anywhere: 8 host devices for sharding tests.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import io

import numpy as np
import PIL.Image
import pytest


@pytest.fixture(scope="module")
def float64():
    """Double precision for one test module (use it autouse there); the rest runs in float32."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def with_overrides(config, **overrides):
    """`config` with dotted-path fields replaced: with_overrides(c, **{"mesh.data": 4})."""
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return config


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data dir shared by the session (the digits set is prepared into it once)."""
    return str(tmp_path_factory.mktemp("tfds"))


def index_image(i: int, shape: tuple[int, int, int]) -> np.ndarray:
    """An image whose first pixels encode the example index (to trace examples)."""
    image = np.full(shape, 128, np.uint8)
    image[0, 0, 0], image[0, 1, 0] = i % 256, i // 256
    return image


def decode_index(images: np.ndarray) -> np.ndarray:
    """Inverse of index_image for a batch (only valid without geometric augmentation)."""
    return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 1, 0].astype(int)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> str:
    """A local TFDS `cifar10` (same features as the catalogue's) with 96 train, 40 test."""
    from nme_train.data.tfds_writer import encode_image, registered_features, write_dataset

    root = str(tmp_path_factory.mktemp("cifar"))
    features, version = registered_features("cifar10")

    def examples(n):
        return lambda: ({"id": f"train_{i}", "image": encode_image(index_image(i, (32, 32, 3))),
                         "label": i % 10} for i in range(n))

    write_dataset("cifar10", root, {"train": examples(96), "test": examples(40)}, features,
                  version)
    return root


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory) -> str:
    """A local TFDS `imagenet2012` of variable-size JPEGs (24 train, 10 validation)."""
    from nme_train.data.tfds_writer import registered_features, write_dataset

    root = str(tmp_path_factory.mktemp("imagenet"))
    features, version = registered_features("imagenet2012")
    rng = np.random.default_rng(0)

    def jpeg(h, w):
        buffer = io.BytesIO()
        PIL.Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            buffer, format="JPEG")
        return buffer.getvalue()

    def examples(n):
        return lambda: ({"file_name": f"n{i:08d}.JPEG",
                         "image": jpeg(int(rng.integers(40, 90)), int(rng.integers(40, 90))),
                         "label": i % 1000} for i in range(n))

    write_dataset("imagenet2012", root, {"train": examples(24), "validation": examples(10)},
                  features, version)
    return root
