"""Real video files whose class is defined by motion alone, for tests, benchmarks and trying video out.

A clip shows one random polygon on a plain background that approaches and recedes: its size follows the
class's trajectory while it spins at a random speed in a random direction. Classes:
- `grow`: it grows from small to large; `shrink`: a `grow` clip played backwards (clip i of one is
  clip i of the other, reversed);
- `grow-shrink`: it grows, then shrinks back; `shrink-grow`: the opposite.
Every class shows each size equally often (the trajectories are uniform over the same range), so no
single frame, and no average of frames, tells the class: a model that averages frames stays at chance.

Why size and not the direction of the spin or of a sideways move: image networks pre-trained with mirror
augmentation give nearly the same pooled features for an image and its mirror image, and a clockwise spin
of a shape is a counter-clockwise spin of its mirror image; left and right likewise. A temporal head on
such frozen features cannot see those directions at all (benchmarks/video.py measured it); growth it can.

    >>> write_motion_clips("clips", per_class=20)   # clips/{grow,grow-shrink,shrink,shrink-grow}/NNN.mp4
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from graftune.data.videos import write_video

TRAJECTORIES: dict[str, Callable[[float], float]] = {  # progress through the clip (0-1) -> size (0-1)
    "grow": lambda p: p,
    "shrink": lambda p: 1 - p,
    "grow-shrink": lambda p: 1 - abs(2 * p - 1),
    "shrink-grow": lambda p: abs(2 * p - 1),
}
CLASSES = tuple(sorted(TRAJECTORIES))
REVERSED = {"grow": "shrink"}  # written as the same clips played backwards


def motion_frames(rng: random.Random, trajectory: str, frames: int = 16, size: int = 64) -> np.ndarray:
    """(frames, size, size, 3) uint8: a random polygon whose size follows `trajectory`, spinning at random."""
    corners = rng.randint(4, 6)
    radii = [rng.uniform(0.45, 1.0) for _ in range(corners)]
    radii[0] = 1.25  # one long point: the spin shows
    angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(corners - 1))
    shape = [(radii[0], 0.0), *zip(radii[1:], angles, strict=True)]
    background = tuple(rng.randint(0, 90) for _ in range(3))
    colour = tuple(rng.randint(150, 255) for _ in range(3))
    start, spin = rng.uniform(0, 2 * math.pi), rng.choice([-1, 1]) * rng.uniform(0.1, 0.3)
    small, large = rng.uniform(0.14, 0.2), rng.uniform(0.38, 0.44)
    centre = (size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3))
    path = TRAJECTORIES[trajectory]
    scale = 4  # drawn at 4x and scaled down: smooth edges
    out = []
    for t in range(frames):
        radius = (small + (large - small) * path(t / max(1, frames - 1))) * size * scale
        turn = start + spin * t
        x, y = centre[0] * scale, centre[1] * scale
        points = [(x + r * radius * math.cos(a + turn), y + r * radius * math.sin(a + turn)) for r, a in shape]
        image = Image.new("RGB", (size * scale, size * scale), background)
        ImageDraw.Draw(image).polygon(points, fill=colour)
        out.append(np.asarray(image.resize((size, size), Image.Resampling.LANCZOS)))
    return np.stack(out)


def write_motion_clips(root: str | Path, per_class: int, frames: int = 16, size: int = 64, seed: int = 0,
                       suffix: str = ".mp4", fps: int = 8, classes: tuple[str, ...] = CLASSES,
                       ) -> dict[str, list[Path]]:
    """Write `per_class` clips of each of `classes` into ROOT/CLASS/NNN{suffix}; the paths by class.
    ("grow", "shrink") gives two classes told apart by the order of their frames alone."""
    root, rng = Path(root), random.Random(seed)
    written: dict[str, list[Path]] = {name: [] for name in classes}

    def write(name: str, clip: np.ndarray, i: int) -> None:
        written[name].append(write_video(root / name / f"{i:03d}{suffix}", clip, fps))

    for i in range(per_class):
        for name in classes:
            if name in REVERSED.values() and any(f in classes for f, b in REVERSED.items() if b == name):
                continue  # written below, as its pair played backwards
            clip = motion_frames(rng, name, frames, size)
            write(name, clip, i)
            if REVERSED.get(name) in classes:
                write(REVERSED[name], clip[::-1], i)
    return written
