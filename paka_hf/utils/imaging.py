"""Turning any decoded PIL image into the 8-bit RGB image the views are cut from.

Handles what real image collections contain: EXIF orientation, grayscale and bilevel, palette
(with or without transparency), RGBA / LA (composited on white, as ``transformers`` does),
CMYK, YCbCr / LAB / HSV, 16-bit and 32-bit integer and float images (rescaled to 8 bits rather
than clipped to white). :func:`fit_within` bounds the size of what the views are cut from.
:data:`IMAGE_SUFFIXES` are the file suffixes every image folder reader of the package takes as images;
:data:`DEFAULT_MAX_IMAGE_PIXELS` is the pixel count above which an image is not decoded by default.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import ExifTags, Image, ImageOps

#: The suffixes (compared in lower case: ``photo.JPG`` is an image) of the files read as images, by every reader
#: of a folder: the training data (:mod:`paka_hf.training.data`), the evaluation folder datasets, the explorer's gallery
#: and ``paka-visualize``. Formats Pillow decodes and that image collections hold in practice (JPEG, PNG, WebP,
#: BMP, GIF, TIFF, Netpbm); all are in the ``datasets`` imagefolder builder's list too, so a folder the training
#: data lists is one that builder reads. One set, so a folder is never read differently by two commands.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


#: Pillow's decompression-bomb threshold (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 pixels): the default pixel
#: limit of the training data's decoder (:func:`paka_hf.training.data.decode_image`) and of the config's
#: ``max_image_pixels``.
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS


def is_image_file(path: os.PathLike | str) -> bool:
    """Whether ``path`` names an image by its suffix (any case; see :data:`IMAGE_SUFFIXES`).

    Args:
        path: a file name or path.

    Returns:
        ``True`` when its suffix, in lower case, is in :data:`IMAGE_SUFFIXES`.

    Example:
        >>> is_image_file("photos/IMG_0001.JPG"), is_image_file("notes.txt")
        (True, False)
    """
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_SUFFIXES


_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _wide_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale → 8-bit 'L', scaled by the range the data uses.

    Float images are taken as [0, 1] when they fit in it, else as [0, 255]; integer images as
    8-bit when their peak is ≤ 255, 16-bit when ≤ 65535, and by their own peak beyond that.
    """
    array = np.nan_to_num(np.asarray(image, dtype=np.float64))
    peak = float(array.max()) if array.size else 0.0
    if image.mode == "F":
        full_scale = 1.0 if peak <= 1.0 else 255.0
    else:
        full_scale = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    eight = np.clip(array / full_scale * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(eight)  # uint8 2-D → mode "L"


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as an upright 8-bit RGB ``PIL.Image``.

    Raises ``ValueError`` for an empty (0-pixel) image, since no view can be cut from it.

    Args:
        image: a decoded image of any Pillow mode.

    Returns:
        The image in mode ``RGB``, upright by its EXIF orientation; ``image`` itself when it is already an
        upright RGB image.

    Raises:
        ValueError: the image has no pixels.
    """
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels (size {image.width}x{image.height})")
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # exif_transpose copies even an upright image
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES:
        return _wide_to_8bit(image).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_within(image: Image.Image | np.ndarray, max_side: int | None) -> Image.Image | np.ndarray:
    """Downscale ``image`` so that its longer side is at most ``max_side`` pixels (aspect ratio kept).

    An image of ``W × H`` with ``max(W, H) = L > max_side`` becomes ``round(W·s) × round(H·s)``
    (each at least 1), ``s = max_side / L``, with Pillow's antialiased bicubic resize; smaller
    images, and ``max_side`` None or ≤ 0, are returned as they are. A PIL image gives a PIL image
    and an RGB ``(H, W, 3)`` uint8 array an array, with the same pixels either way, so the CPU and
    the device rendering cut their views from the same image.

    Args:
        image: a PIL image, or an RGB ``(H, W, 3)`` uint8 array.
        max_side: the longest side allowed in pixels; None or ≤ 0 for no limit.

    Returns:
        The downscaled image, of the same type as ``image``, or ``image`` itself when it already fits.
    """
    height, width = (image.shape[0], image.shape[1]) if isinstance(image, np.ndarray) else (image.height, image.width)
    if not max_side or max_side <= 0 or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, min(max_side, round(width * scale))), max(1, min(max_side, round(height * scale))))
    if isinstance(image, np.ndarray):
        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    return image.resize(size, Image.Resampling.BICUBIC)
