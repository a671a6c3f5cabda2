"""Video classification: clips in (class folders of video files, or a CSV/JSONL of paths), one label out.

Built on any image source: the image body runs on each of K sampled frames and a temporal head reads
their features in order (tasks/temporal.py), or the CNN is inflated into a 3D network first
(`video.inflate`, backbones/inflate.py). A Transformers video model (VideoMAE and the like, `hf:`) takes
the whole clip itself, with a pooled head on its tokens. Metrics, evaluation, plots and predictions are
the classifier's.
"""

from __future__ import annotations

from typing import Any

import torch

from graftune.backbones.base import Backbone
from graftune.backbones.inflate import inflate
from graftune.config import Config
from graftune.data.inputs import EncodeInputs
from graftune.data.videos import clip_tensor, decode
from graftune.errors import UserError
from graftune.grafted import GraftedModel
from graftune.preprocessing import ImagePreprocess, Preprocess
from graftune.tasks.classification import Classification
from graftune.tasks.heads import Pooling, build_head, pooled_width
from graftune.tasks.image_classification import THUMBNAIL, thumbnail_cell
from graftune.tasks.temporal import ClipModel, FramePooling, build_temporal_head

# The temporal head of `video.temporal: auto`: the one that did best on motion in benchmarks/video.py.
DEFAULT_TEMPORAL = "conv"


class VideoClassification(Classification):
    name = "video-classification"
    modality = "video"
    backbone_modalities = ("image", "video")

    @classmethod
    def resolve(cls, cfg: Config, backbone: Backbone) -> Config:
        """The classifier's pooling (per frame), the temporal head, and for a video model its own frame count."""
        reg, video = cfg.regularize, cfg.video
        if reg.mixup or reg.cutmix or reg.ewc:
            raise UserError("regularize.mixup, cutmix and ewc are for images and texts; remove them for video.")
        if backbone.modality == "video":
            if video.inflate:
                raise UserError(f"video.inflate: {backbone.source} is already a video model; remove video.inflate.")
            if video.temporal not in ("auto", "mean"):
                raise UserError(f"video.temporal={video.temporal}: {backbone.source} mixes the frames itself; its "
                                "head pools its tokens. Remove video.temporal.")
            assert isinstance(backbone.preprocess, ImagePreprocess) and backbone.preprocess.frames
            frames = backbone.preprocess.frames
            if video.frames not in (frames, type(video).model_fields["frames"].default):
                raise UserError(f"video.frames={video.frames}: {backbone.source} takes clips of {frames} frames. "
                                f"Set video.frames={frames} or remove it.")
            return super().resolve(cfg.updated({"video.frames": frames, "video.temporal": "mean"}), backbone)
        temporal = DEFAULT_TEMPORAL if video.temporal == "auto" else video.temporal
        return super().resolve(cfg.updated({"video.temporal": temporal}), backbone)

    def describe_schema(self) -> str:
        video = self.settings.video
        body = f"inflated x{video.inflate} in time, " if video.inflate else ""
        return f"{len(self.labels)} classes; {video.frames} frames per clip ({video.sampling}), {body}" \
               f"{video.temporal} over time"

    def build_model(self, backbone: Backbone) -> GraftedModel:
        head_cfg, video = self.settings.head, self.settings.video
        policy = self.settings.freeze.batchnorm
        if backbone.modality == "video":
            clip_head = build_head(head_cfg, backbone.feature_dim, len(self.labels), head_cfg.pooling)
            return GraftedModel(backbone.body, clip_head, Pooling(head_cfg.pooling), policy)
        if video.inflate:
            inflate(backbone.body, video.inflate)  # parameter names stay: layer groups keep their meaning
        head = build_temporal_head(video.temporal, head_cfg, pooled_width(backbone.feature_dim, head_cfg.pooling),
                                   video.frames, len(self.labels))
        return ClipModel(backbone.body, head, FramePooling(head_cfg.pooling, video.frames, video.sampling), policy)

    def example_cell(self, row: dict[str, Any]) -> str:
        """The clip's middle frame as a thumbnail in the report (a note when the file is gone)."""
        from PIL import Image

        try:
            frames = decode(row["input"], THUMBNAIL)
        except UserError:
            return super().example_cell({**row, "input": "(video file missing or unreadable)"})
        return thumbnail_cell(Image.fromarray(frames[len(frames) // 2]), row["where"])

    def example_shape(self, preprocess: ImagePreprocess) -> tuple[int, ...]:
        return (self.settings.video.frames, 3, preprocess.size, preprocess.size)

    def input_steps(self, spec: dict[str, Any]) -> dict[str, Any]:
        video, size = self.settings.video, spec["size"]
        return {**spec, "frames": video.frames, "sampling": video.sampling, "steps": [
            f"decode the clip and pick {video.frames} frames ({video.sampling} sampling, without the training "
            "jitter), each frame as below", *spec["steps"], f"frames stacked: float32 ({video.frames}, 3, {size}, "
            f"{size})"]}

    def encoder(self, preprocess: Preprocess, augment: bool = False) -> EncodeInputs:
        """Video paths to (B, K, 3, size, size) frames: sampled, jittered and cropped alike in training."""
        assert isinstance(preprocess, ImagePreprocess)
        video = self.settings.video

        def clips(paths: list[str]) -> dict[str, Any]:
            return {"pixel_values": torch.stack([clip_tensor(path, preprocess, video.frames, video.sampling, augment,
                                                             video.flip) for path in paths])}

        return clips
