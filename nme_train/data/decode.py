"""JPEG decoding for the ImageNet pipeline, with the decoder a config choice.

Both decoders run libjpeg-turbo with its default (accurate integer) IDCT
and give the same pixels, in full and at each DCT scale (tested); they
differ in overhead per image. Measured on this project's synthetic
ImageNet (docs/imagenet.md): simplejpeg decodes in half PIL's time (1.26
against 2.51 ms per image), and the whole pipeline serves 1.2-1.45x the
images per core. `auto` takes simplejpeg when it is installed and PIL
otherwise, so a machine without it trains on identical inputs.

`decode_window` is the crop-first path: the crop window is chosen from the
header's size, the JPEG is decoded at the smallest DCT scale (1/1, 1/2, 1/4,
1/8: libjpeg-turbo's fast scaled IDCTs) that still gives the window at
least the output resolution, and only the window is resampled. Neither
decoder exposes libjpeg-turbo's partial decoding (`jpeg_crop_scanline`,
`jpeg_skip_scanlines`), so the rows and columns outside the window are
still decoded at that scale; docs/imagenet.md measures what that costs.
"""

from __future__ import annotations

import io
import math
from typing import Protocol

import numpy as np
import PIL.Image

DECODERS = ("auto", "pil", "simplejpeg")
DCT_SCALES = (1, 2, 4, 8)  # denominators libjpeg-turbo decodes at with its fast scaled IDCTs

Window = tuple[float, float, float, float]  # (top, left, height, width) in the JPEG's pixels


class JpegDecoder(Protocol):
    """What the pipeline needs of a decoder; `scales` (1,) means no scaled decoding."""

    name: str
    scales: tuple[int, ...]

    def size(self, data: bytes) -> tuple[int, int]:
        """(height, width) from the header alone."""

    def decode(self, data: bytes, scale: int = 1) -> np.ndarray | PIL.Image.Image:
        """The image at 1/`scale` of its size (rounded up, as libjpeg does), RGB."""


class PilDecoder:
    name = "pil"
    scales = DCT_SCALES

    def size(self, data: bytes) -> tuple[int, int]:
        with PIL.Image.open(io.BytesIO(data)) as image:
            return image.size[1], image.size[0]

    def decode(self, data: bytes, scale: int = 1) -> PIL.Image.Image:
        image = PIL.Image.open(io.BytesIO(data))
        if scale > 1:  # asks for at least 1/scale of each side: libjpeg decodes at 1/scale
            image.draft("RGB", (image.size[0] // scale, image.size[1] // scale))
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")


class SimplejpegDecoder:
    name = "simplejpeg"
    scales = DCT_SCALES

    def size(self, data: bytes) -> tuple[int, int]:
        import simplejpeg

        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        return height, width

    def decode(self, data: bytes, scale: int = 1) -> np.ndarray:
        import simplejpeg

        if scale == 1:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        height, width = self.size(data)  # the smallest output of at least 1/scale per side
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_factor=scale,
                                      min_height=-(-height // scale),
                                      min_width=-(-width // scale))


def have_simplejpeg() -> bool:
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return False
    return True


def jpeg_decoder(name: str) -> JpegDecoder:
    """The decoder called `name` (one of DECODERS)."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; choose one of {DECODERS}")
    if name == "simplejpeg" and not have_simplejpeg():
        raise ValueError("decoder 'simplejpeg' is not installed: `pip install simplejpeg`, "
                         "or set config.data.decoder='pil'")
    if name == "pil" or (name == "auto" and not have_simplejpeg()):
        return PilDecoder()
    return SimplejpegDecoder()


def as_array(image: np.ndarray | PIL.Image.Image) -> np.ndarray:
    """uint8 HWC RGB array of a decoder's output."""
    return image if isinstance(image, np.ndarray) else np.asarray(image)


def dct_scale(window: Window, size: int, scales: tuple[int, ...]) -> int:
    """The largest of `scales` at which the window still spans at least `size` pixels per side."""
    side = min(window[2], window[3])
    return max([s for s in scales if side / s >= size] or [1])


def decode_window(decoder: JpegDecoder, data: bytes, window: Window, size: int,
                  image_size: tuple[int, int] | None = None, flip: bool = False) -> np.ndarray:
    """The window of the JPEG, resampled (bilinear) to size x size: uint8 RGB.

    Decodes at `dct_scale` and resamples the window from the result
    (`resample_window`). `image_size` (the header's (height, width)) saves
    reading the header again.
    """
    image = decoder.decode(data, dct_scale(window, size, decoder.scales))
    return resample_window(image, window, image_size or decoder.size(data), size, flip)


def resample_window(image: np.ndarray | PIL.Image.Image, window: Window,
                    image_size: tuple[int, int], size: int, flip: bool = False) -> np.ndarray:
    """`window` (in the pixels of an image of `image_size`) of `image`, a decode of that image
    at any scale, resampled (bilinear) to size x size and mirrored left-right if `flip`
    (by PIL: numpy's copy of a reversed view costs 5x more).

    Cuts the smallest whole-pixel region holding the window at the decoded
    scale and resamples the window's exact (fractional) extent from it, so
    for a full-scale decode and a whole-pixel window the pixels are those of
    cropping and resizing (`augment.resize`).
    """
    height, width = image_size
    if isinstance(image, np.ndarray):
        scaled_h, scaled_w = image.shape[:2]
    else:
        scaled_w, scaled_h = image.size
    fy, fx = scaled_h / height, scaled_w / width  # exact per-side factors after rounding up
    top, left, h, w = window
    y0, y1, x0, x1 = top * fy, (top + h) * fy, left * fx, (left + w) * fx
    r0, c0 = max(0, math.floor(y0)), max(0, math.floor(x0))
    r1, c1 = min(scaled_h, math.ceil(y1 - 1e-9)), min(scaled_w, math.ceil(x1 - 1e-9))
    if isinstance(image, np.ndarray):
        region = PIL.Image.fromarray(image[r0:r1, c0:c1])
    else:
        region = image.crop((c0, r0, c1, r1))
    box = (x0 - c0, y0 - r0, min(x1, c1) - c0, min(y1, r1) - r0)
    out = region.resize((size, size), PIL.Image.BILINEAR, box=box)
    return np.asarray(out.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT) if flip else out)
