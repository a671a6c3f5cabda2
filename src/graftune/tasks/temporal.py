"""Video models built on an image backbone: the body runs on every frame, a temporal head reads the frames
in order.

    clip (B, K, 3, S, S) -> body on B*K frames -> pooled per frame (B, K, D) -> temporal head -> logits

`ClipModel.encode` is the per-frame features (B, K, D), so the feature cache holds exactly those while
the body is frozen. Temporal heads (`video.temporal`):
- `mean`: the average of the frames' features, then the classifier: blind to order (a clip and the same
  clip backwards look alike), the baseline of the benchmark;
- `conv`: two temporal convolutions (kernel 3) over the frame sequence, then max over time;
- `attention`: one transformer layer over the frames with learned positions, then the mean.
An inflated body (backbones/inflate.py) mixes frames inside the body instead; any head sits on it.
"""

from __future__ import annotations

import torch
from torch import nn

from graftune.backbones.inflate import set_frames
from graftune.config import HeadConfig
from graftune.grafted import GraftedModel
from graftune.tasks.heads import Pooling, build_head

TEMPORAL_HEADS = ("mean", "conv", "attention")


class FramePooling(nn.Module):
    """The neck: spatial pooling of each frame's features, regrouped per clip as (B, K, D)."""

    def __init__(self, kind: str, frames: int, sampling: str) -> None:
        super().__init__()
        self.pool, self.frames, self.sampling = Pooling(kind), frames, sampling

    def extra_repr(self) -> str:
        return f"frames={self.frames}, sampling={self.sampling}"  # part of the feature cache's key

    def forward(self, features: torch.Tensor, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.pool(features).unflatten(0, (-1, self.frames))


class ClipModel(GraftedModel):
    """A GraftedModel whose body sees the frames of every clip as one batch of images."""

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        clips = inputs["pixel_values"]
        set_frames(self.body, clips.shape[1])
        return self.neck(self.body(pixel_values=clips.flatten(0, 1)))


class MeanOverTime(nn.Module):
    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.classifier(frames.mean(dim=1))


class TemporalConv(nn.Module):
    """Two 1-D convolutions over time (kernel 3), then max over time and the classifier."""

    def __init__(self, feature_dim: int, width: int, dropout: float, classifier: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.convs = nn.Sequential(nn.Conv1d(feature_dim, width, 3, padding=1), nn.GELU(), nn.Dropout(dropout),
                                   nn.Conv1d(width, width, 3, padding=1), nn.GELU())
        self.classifier = classifier

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        mixed = self.convs(self.norm(frames).transpose(1, 2))  # (B, width, K)
        return self.classifier(mixed.amax(dim=2))


class TemporalAttention(nn.Module):
    """One transformer encoder layer over the frames, with learned positions; the mean, then the classifier."""

    def __init__(self, feature_dim: int, width: int, frames: int, dropout: float, classifier: nn.Module) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, width))
        self.positions = nn.Parameter(torch.zeros(1, frames, width))
        nn.init.trunc_normal_(self.positions, std=0.02)
        self.layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, dropout=dropout,
                                                batch_first=True, norm_first=True)
        self.classifier = classifier

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        mixed = self.layer(self.project(frames) + self.positions[:, :frames.shape[1]])
        return self.classifier(mixed.mean(dim=1))


def build_temporal_head(kind: str, head: HeadConfig, feature_dim: int, frames: int, classes: int,
                        width: int = 256) -> nn.Module:
    """The temporal head `kind` on per-frame features of `feature_dim`; `head.hidden` and `head.dropout`
    shape its classifier as for images."""
    if kind == "mean":
        return MeanOverTime(build_head(head, feature_dim, classes, "avg"))
    classifier = build_head(head, width, classes, "avg")
    if kind == "conv":
        return TemporalConv(feature_dim, width, head.dropout, classifier)
    return TemporalAttention(feature_dim, width, frames, head.dropout, classifier)
