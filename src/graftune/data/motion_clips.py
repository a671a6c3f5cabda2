"""Real video files whose class is defined by motion alone, for tests, benchmarks and trying video out.

A clip shows one random asymmetric polygon that spins and zooms on a plain background. The class is
the direction of both: `cw-in` spins clockwise while growing, `ccw-out` spins counter-clockwise while
shrinking, and so on. Clips come in reversed pairs: `ccw-out` clip i is `cw-in` clip i played backwards
(and `ccw-in` is `cw-out` backwards). So every class holds the same frames, only in another order: no
single frame, and no average of frames, tells the class; a model that averages frames stays at chance.

    >>> write_motion_clips("clips", per_class=20)   # clips/{ccw-in,ccw-out,cw-in,cw-out}/NNN.mp4
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from graftune.data.videos import write_video

CLASSES = ("ccw-in", "ccw-out", "cw-in", "cw-out")
REVERSED = {"cw-in": "ccw-out", "cw-out": "ccw-in"}


def motion_frames(rng: random.Random, spin: int, zoom: int, frames: int = 16, size: int = 64) -> np.ndarray:
    """(frames, size, size, 3) uint8: a random polygon spinning (`spin` +1 clockwise, -1 counter-clockwise)
    while growing (`zoom` +1) or shrinking (-1)."""
    corners = rng.randint(4, 6)
    radii = [rng.uniform(0.45, 1.0) for _ in range(corners)]
    radii[0] = 1.25  # one long point, so that the orientation always shows
    angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(corners - 1))
    shape = [(radii[0], 0.0), *zip(radii[1:], angles, strict=True)]
    background = tuple(rng.randint(0, 90) for _ in range(3))
    colour = tuple(rng.randint(150, 255) for _ in range(3))
    start, speed = rng.uniform(0, 2 * math.pi), rng.uniform(0.18, 0.3)
    small, large = rng.uniform(0.18, 0.24), rng.uniform(0.36, 0.42)
    centre = (size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3))
    scale = 4  # drawn at 4x and scaled down: smooth edges
    out = []
    for t in range(frames):
        progress = t / max(1, frames - 1)
        radius = (small + (large - small) * (progress if zoom > 0 else 1 - progress)) * size * scale
        turn = start + spin * speed * t  # image y points down: a growing angle turns clockwise on screen
        x, y = centre[0] * scale, centre[1] * scale
        points = [(x + r * radius * math.cos(a + turn), y + r * radius * math.sin(a + turn)) for r, a in shape]
        image = Image.new("RGB", (size * scale, size * scale), background)
        ImageDraw.Draw(image).polygon(points, fill=colour)
        out.append(np.asarray(image.resize((size, size), Image.Resampling.LANCZOS)))
    return np.stack(out)


def write_motion_clips(root: str | Path, per_class: int, frames: int = 16, size: int = 64, seed: int = 0,
                       suffix: str = ".mp4", fps: int = 8, forward: tuple[str, ...] = ("cw-in", "cw-out"),
                       ) -> dict[str, list[Path]]:
    """Write `per_class` clips of each class into ROOT/CLASS/NNN{suffix}; the paths by class. `forward` picks
    the pairs: ("cw-in",) writes only cw-in and its reversal ccw-out, two classes told apart by order alone."""
    root, rng = Path(root), random.Random(seed)
    written: dict[str, list[Path]] = {name: [] for name in forward}
    written.update({REVERSED[name]: [] for name in forward})
    for i in range(per_class):
        for forward_class in forward:
            backward = REVERSED[forward_class]
            spin = 1 if forward_class.startswith("cw") else -1
            zoom = 1 if forward_class.endswith("in") else -1
            clip = motion_frames(rng, spin, zoom, frames, size)
            for name, sequence in ((forward_class, clip), (backward, clip[::-1])):
                path = root / name / f"{i:03d}{suffix}"
                write_video(path, sequence, fps)
                written[name].append(path)
    return written
