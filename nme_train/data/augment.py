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


def _center_geometry(h: int, w: int, size: int, crop_fraction: float):
    scale = round(size / crop_fraction) / min(h, w)
    rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
    return rh, rw, (rh - size) // 2, (rw - size) // 2


def resize_center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Resizes the shorter side to size / crop_fraction (256 for 224), then centre-crops."""
    rh, rw, top, left = _center_geometry(*image.shape[:2], size, crop_fraction)
    return resize(image, (rh, rw))[top : top + size, left : left + size]


def center_window(h: int, w: int, size: int, crop_fraction: float = 0.875
                  ) -> tuple[float, float, float, float]:
    """(top, left, height, width), in the h x w image's pixels, of what `resize_center_crop`
    keeps: resampling this window to size x size in one step gives nearly its pixels."""
    rh, rw, top, left = _center_geometry(h, w, size, crop_fraction)
    fy, fx = h / rh, w / rw
    return top * fy, left * fx, size * fy, size * fx


def pad_crop(image: np.ndarray, top: int, left: int, pad: int = PAD) -> np.ndarray:
    """Zero-pads `pad` pixels on each side and crops the original size at (top, left)."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    return padded[top : top + h, left : left + w]


def inception_window(h: int, w: int, area: np.ndarray, log_aspect: np.ndarray,
                     corner: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the Inception-style random-resized crop (Szegedy et al.,
    2015) of an h x w image.

    Attempt k takes area fraction `area[k]` and aspect ratio exp(log_aspect[k]);
    the first crop that fits is placed at the fractional corner `corner[k]`.
    If none fits, the central square is used. Only the image's size enters,
    so the window can be chosen from a JPEG's header before decoding.
    """
    for a, la, (ft, fl) in zip(area, log_aspect, corner):
        target, aspect = h * w * a, math.exp(la)
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(ft * (h - ch + 1)), int(fl * (w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def inception_crop(
    image: np.ndarray, size: int, area: np.ndarray, log_aspect: np.ndarray, corner: np.ndarray
) -> np.ndarray:
    """The crop of `inception_window`, cut from a decoded image and resized to `size`."""
    top, left, ch, cw = inception_window(*image.shape[:2], area, log_aspect, corner)
    return resize(image[top : top + ch, left : left + cw], (size, size))


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
