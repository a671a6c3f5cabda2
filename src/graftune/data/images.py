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
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot decode image ({err}). Remove or replace the file.") from None


def random_resized_crop(image: Image.Image, size: int, scale: tuple[float, float] = (0.35, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = random.randint(0, width - w)
            top = random.randint(0, height - h)
            return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    return center_crop(image, size, 1.0)


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
