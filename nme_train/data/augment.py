"""Image preprocessing in numpy, driven by random draws made per global batch.

The random numbers of a whole global batch are drawn at once from a
generator seeded by (seed, step) (`draw`), and each process applies the rows
of the examples it owns (`apply`). An example's augmentation is therefore the
same whatever the number of processes, and costs no per-example seeding.

Images stay uint8 HWC; conversion to float and normalisation happen on the
device, which moves 4x fewer bytes from host to device.
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image

AUGMENTATIONS = ("none", "flip", "pad_crop", "pad_crop_flip", "inception_crop_flip")
PAD = 4  # pixels of zero padding for pad_crop (the standard CIFAR recipe)
INCEPTION_ATTEMPTS = 10
INCEPTION_AREA = (0.08, 1.0)
INCEPTION_ASPECT = (3 / 4, 4 / 3)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 HWC image to (height, width)."""
    squeeze = image.shape[-1] == 1
    pil = PIL.Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.resize((size[1], size[0]), PIL.Image.BILINEAR))
    return out[..., None] if squeeze else out


def resize_center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Resizes the shorter side to size / crop_fraction (256 for 224), then centre-crops."""
    h, w = image.shape[:2]
    scale = round(size / crop_fraction) / min(h, w)
    image = resize(image, (max(size, round(h * scale)), max(size, round(w * scale))))
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def pad_crop(image: np.ndarray, top: int, left: int, pad: int = PAD) -> np.ndarray:
    """Zero-pads `pad` pixels on each side and crops the original size at (top, left)."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    return padded[top : top + h, left : left + w]


def inception_crop(
    image: np.ndarray, size: int, area: np.ndarray, log_aspect: np.ndarray, corner: np.ndarray
) -> np.ndarray:
    """The Inception-style random-resized crop (Szegedy et al., 2015).

    Attempt k takes area fraction `area[k]` and aspect ratio exp(log_aspect[k]);
    the first crop that fits is placed at the fractional corner `corner[k]`.
    If none fits, the central square is used. The crop is resized to `size`.
    """
    h, w = image.shape[:2]
    for a, la, (ft, fl) in zip(area, log_aspect, corner):
        target, aspect = h * w * a, math.exp(la)
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(ft * (h - ch + 1)), int(fl * (w - cw + 1))
            return resize(image[top : top + ch, left : left + cw], (size, size))
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize(image[top : top + side, left : left + side], (size, size))


def draw(name: str, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    """Random parameters of augmentation `name` for `batch` examples (one row each)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {AUGMENTATIONS}")
    params: dict[str, np.ndarray] = {}
    if name in ("pad_crop", "pad_crop_flip"):
        params["offset"] = rng.integers(0, 2 * PAD + 1, size=(batch, 2))
    if name == "inception_crop_flip":
        k = INCEPTION_ATTEMPTS
        params["area"] = rng.uniform(*INCEPTION_AREA, size=(batch, k))
        params["log_aspect"] = rng.uniform(*np.log(INCEPTION_ASPECT), size=(batch, k))
        params["corner"] = rng.random(size=(batch, k, 2))
    if name in ("flip", "pad_crop_flip", "inception_crop_flip"):
        params["flip"] = rng.random(batch) < 0.5
    return params


def augment_image(name: str, image: np.ndarray, params: dict[str, np.ndarray], i: int,
          size: int) -> np.ndarray:
    """Applies augmentation `name` to one image with row `i` of `params`."""
    if "offset" in params:
        image = pad_crop(image, *params["offset"][i])
    if "area" in params:
        image = inception_crop(image, size, params["area"][i], params["log_aspect"][i],
                               params["corner"][i])
    if "flip" in params and params["flip"][i]:
        image = image[:, ::-1]
    return image
