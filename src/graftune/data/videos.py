"""Video clips: decoded with PyAV, K frames sampled per clip, prepared as the image backbone expects.

Sampling (`video.frames` K, `video.sampling`):
- `uniform`: K frames evenly spaced over the clip, each in the middle of its stretch; in training the
  whole grid shifts by one random offset within a stretch (temporal jitter, spacing kept).
- `segments` (TSN): the clip cut into K equal segments, one frame from each: the middle one in
  evaluation, a random one in training.
A clip of fewer than K frames repeats frames, so every clip gives K.

Augmentation is drawn once per clip and applied to each of its frames: one crop box and, with
`video.flip`, one mirror. Mirroring is off by default because it turns clockwise into counter-clockwise
and left into right: the very motions an action can be defined by.

A clip is decoded once per process and kept (its frames scaled so the short side is what the crops need)
in a cache of `DECODE_CACHE_BYTES`: epochs that run the body read frames from memory, not the file.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from graftune.data.images import center_crop, crop_box, resized, to_tensor
from graftune.errors import UserError
from graftune.preprocessing import ImagePreprocess

VIDEO_SUFFIXES = {".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v"}
MAX_FRAMES = 512  # frames kept per decoded clip; a longer clip keeps every n-th frame
DECODE_CACHE_BYTES = 2 << 30


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise UserError("video needs PyAV: pip install av (or ./install.sh, which installs it).") from None
    return av


def check_video(file: Path, where: str | None = None) -> str:
    """The path of a video file that decodes to at least one frame, or an error naming it."""
    where = where or str(file)
    if not file.is_file():
        raise UserError(f"{where}: video file {file} not found.")
    try:
        frames = count_frames(file)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    if frames == 0:
        raise UserError(f"{where}: {file.name} has no video frames. Remove or replace the file.")
    return str(file)


@contextmanager
def _video_stream(file: str | Path) -> Iterator[Any]:
    """The opened container of a file with a video stream; FFmpeg's errors become one message naming the file."""
    av, name = _av(), Path(file).name
    try:
        with av.open(str(file)) as container:
            if not container.streams.video:
                raise UserError(f"{name} holds no video stream.")
            yield container
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise UserError(f"cannot decode video {name} ({err}). Remove or replace the file.") from None


def count_frames(file: Path) -> int:
    """Decode every frame of the file's first video stream (the only way to know it is whole) and count them."""
    with _video_stream(file) as container:
        return sum(1 for _ in container.decode(video=0))


def decode(file: str | Path, short_side: int) -> np.ndarray:
    """All frames (at most MAX_FRAMES, evenly kept) as uint8 RGB (T, H, W, 3), scaled so the short side is
    `short_side` (never enlarged)."""
    try:
        with _video_stream(file) as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            scale = min(1.0, short_side / max(1, min(width, height)))
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            frames = [frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                      for frame in container.decode(video=0)]
    except UserError as err:
        raise UserError(f"{file}: {err}") from None
    if not frames:
        raise UserError(f"{file}: no video frames. Remove or replace the file.")
    if len(frames) > MAX_FRAMES:
        step = len(frames) / MAX_FRAMES
        frames = [frames[int(i * step)] for i in range(MAX_FRAMES)]
    return np.stack(frames)


class DecodedClips:
    """Decoded clips kept in memory, least recently used dropped first beyond `budget` bytes."""

    def __init__(self, budget: int = DECODE_CACHE_BYTES) -> None:
        self.budget, self.used, self.decodes = budget, 0, 0
        self._clips: OrderedDict[tuple[str, int, int, int], np.ndarray] = OrderedDict()

    def frames(self, file: str, short_side: int) -> np.ndarray:
        stat = Path(file).stat()
        key = (file, stat.st_mtime_ns, stat.st_size, short_side)  # a rewritten file is decoded again
        clip = self._clips.get(key)
        if clip is not None:
            self._clips.move_to_end(key)
            return clip
        clip = decode(file, short_side)
        self.decodes += 1
        self._clips[key] = clip
        self.used += clip.nbytes
        while self.used > self.budget and len(self._clips) > 1:
            _, dropped = self._clips.popitem(last=False)
            self.used -= dropped.nbytes
        return clip


DECODED = DecodedClips()


def frame_indices(length: int, count: int, sampling: str, draw: Callable[[], float] | None = None) -> list[int]:
    """Which `count` of a clip's `length` frames to take (see the module docstring); `draw` (uniform in [0, 1))
    jitters them."""
    stretch = length / count
    if sampling == "segments":
        picks = [(i + (draw() if draw else 0.5)) * stretch for i in range(count)]
    else:
        offset = (draw() if draw else 0.5) * stretch
        picks = [offset + i * stretch for i in range(count)]
    return [min(length - 1, max(0, math.floor(p))) for p in picks]


def clip_tensor(file: str, preprocess: ImagePreprocess, count: int, sampling: str, augment: bool = False,
                flip: bool = False, decoded: DecodedClips | None = None) -> torch.Tensor:
    """One clip as the normalised (K, 3, size, size) frames the image backbone expects; `decoded`: the
    decode cache (default: the process's own)."""
    size = preprocess.size
    frames = (decoded or DECODED).frames(file, max(size, round(size / preprocess.crop_pct)))
    picked = frames[frame_indices(len(frames), count, sampling, random.random if augment else None)]
    images = [Image.fromarray(frame) for frame in picked]
    if augment:
        box = crop_box(images[0].size)
        mirror = flip and random.random() < 0.5
        images = [center_crop(image, size, 1.0) if box is None else resized(image, size, box) for image in images]
        if mirror:
            images = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]
    else:
        images = [center_crop(image, size, preprocess.crop_pct) for image in images]
    return torch.stack([to_tensor(image, preprocess) for image in images])


CODECS = {".mp4": "h264", ".m4v": "h264", ".mov": "h264", ".mkv": "h264", ".webm": "libvpx", ".avi": "mpeg4"}


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Write uint8 RGB frames (T, H, W, 3) as a video file; the codec follows the suffix (h264, VP8, MPEG-4)."""
    av, path = _av(), Path(path)
    codec = CODECS.get(path.suffix.lower())
    if codec is None:
        raise UserError(f"{path}: cannot write video of type '{path.suffix}'; use one of {', '.join(sorted(CODECS))}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2  # yuv420p: even sides
        stream.pix_fmt = "yuv420p"
        if codec == "h264":
            stream.options = {"crf": "18"}  # near lossless: the motion, not the codec, should decide a class
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
