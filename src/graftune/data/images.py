"""Image preprocessing without torchvision: what the backbone expects, plus training augmentation.

Training: random resized crop (scale 0.35-1, like fastai's default `min_scale`) and horizontal flip.
Evaluation: resize to size / crop_pct, then centre crop, as timm and torchvision evaluate.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess


def open_rgb(path: str) -> Image.Image:
    """Read an image file as 8-bit RGB, whatever its mode (see `to_rgb`)."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except Image.DecompressionBombError as err:
        raise UserError(f"{path}: {err} Resize the image, or remove it.") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"{path}: cannot decode image ({err}). Remove or replace the file.") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB with the image's full range kept: PIL's own conversion clips 16-bit and 32-bit integer
    greys at 255 (nearly all white) and truncates float greys in [0, 1] to 0 or 1 (nearly all black).

    16-bit greys are scaled by 255/65535. A 32-bit integer file says nothing of its values' range, so they
    are scaled by the smallest of 255 and 65535 that holds them (8-bit or 16-bit data stored wide), else by
    their maximum. Float greys likewise by 1 or 255, else by their maximum. Palettes with transparency go
    through RGBA, as PIL asks.
    """
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        full = _white(image, peak)
        grey = np.clip(np.round(values / max(full, 1e-12) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def _white(image: Image.Image, peak: float) -> float:
    """The value that is white in an integer or float grey image whose largest value is `peak`."""
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        return 65535.0  # 16 bits by the file (PNG has no 32-bit greys; older Pillow opens 16-bit ones as I)
    steps = (1.0, 255.0) if image.mode == "F" else (255.0, 65535.0)
    return next((full for full in steps if peak <= full), peak)


def crop_box(image_size: tuple[int, int], scale: tuple[float, float] = (0.35, 1.0),
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int] | None:
    """A random box (left, top, right, bottom) of `scale` of the area and `ratio` aspect, inside an image of
    `image_size`; None when ten draws do not fit (then take the centre crop)."""
    width, height = image_size
    area = width * height
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = random.randint(0, width - w)
            top = random.randint(0, height - h)
            return left, top, left + w, top + h
    return None


def random_resized_crop(image: Image.Image, size: int) -> Image.Image:
    box = crop_box(image.size)
    return center_crop(image, size, 1.0) if box is None else resized(image, size, box)


def resized(image: Image.Image, size: int, box: tuple[int, int, int, int]) -> Image.Image:
    """The `box` of `image`, scaled to a `size` square."""
    return image.resize((size, size), Image.Resampling.BILINEAR, box=box)


def center_crop(image: Image.Image, size: int, crop_pct: float) -> Image.Image:
    scaled = max(size, round(size / crop_pct))
    width, height = image.size
    factor = scaled / min(width, height)
    image = image.resize((max(size, round(width * factor)), max(size, round(height * factor))),
                         Image.Resampling.BILINEAR)
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image, preprocess: ImagePreprocess) -> torch.Tensor:
    mean = np.asarray(preprocess.mean, dtype=np.float32)
    std = np.asarray(preprocess.std, dtype=np.float32)
    scaled = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


def image_tensor(path: str, preprocess: ImagePreprocess, augment: bool) -> torch.Tensor:
    """Read one image file and turn it into the normalised (3, size, size) tensor the backbone expects."""
    image = open_rgb(path)
    if augment:
        image = random_resized_crop(image, preprocess.size)
        if random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    else:
        image = center_crop(image, preprocess.size, preprocess.crop_pct)
    return to_tensor(image, preprocess)
