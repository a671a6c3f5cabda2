"""Video: decoding and frame sampling on real generated files, inflation of 2D weights into 3D, temporal heads."""

from __future__ import annotations

import random
import re
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from torch import nn

from graftune.backbones.base import ImageBody
from graftune.backbones.inflate import InflatedConv, inflate, set_frames
from graftune.config import HeadConfig
from graftune.data.motion_clips import write_motion_clips
from graftune.data.readers import read_examples
from graftune.data.videos import (
    DecodedClips,
    check_video,
    clip_tensor,
    count_frames,
    decode,
    frame_indices,
    write_video,
)
from graftune.errors import InputWarning, UserError
from graftune.preprocessing import ImagePreprocess
from graftune.tasks.temporal import ClipModel, FramePooling, build_temporal_head


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return write_motion_clips(tmp_path_factory.mktemp("clips"), per_class=2, frames=12, size=32)


# --- decoding and sampling -----------------------------------------------------------------------------------


def test_generated_clips_decode_whole(clips: dict[str, list[Path]]) -> None:
    assert sorted(clips) == ["grow", "grow-shrink", "shrink", "shrink-grow"]
    path = clips["grow"][0]
    assert count_frames(path) == 12
    frames = decode(path, short_side=32)
    assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8
    assert decode(path, short_side=16).shape == (12, 16, 16, 3)  # scaled down while decoding
    assert decode(path, short_side=64).shape == (12, 32, 32, 3)  # never enlarged


def test_reversed_pairs_hold_the_same_frames_in_the_other_order(clips: dict[str, list[Path]]) -> None:
    forward, backward = decode(clips["grow"][0], 32), decode(clips["shrink"][0], 32)
    other = decode(clips["grow"][1], 32)
    assert np.abs(forward.astype(int) - backward[::-1].astype(int)).mean() < 3  # codec noise only
    assert np.abs(forward.astype(int) - backward.astype(int)).mean() > 3 * np.abs(
        forward.astype(int) - backward[::-1].astype(int)).mean()
    assert np.abs(forward.astype(int) - other.astype(int)).mean() > 3


def test_every_container_the_task_reads_round_trips(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    for suffix in (".mp4", ".avi", ".webm", ".mkv"):
        assert count_frames(write_video(tmp_path / f"clip{suffix}", frames)) == 5


def test_uniform_and_segment_sampling() -> None:
    assert frame_indices(16, 4, "uniform") == [2, 6, 10, 14]
    assert frame_indices(16, 4, "segments") == [2, 6, 10, 14]
    draws = iter([0.0, 0.99, 0.5, 0.25])
    assert frame_indices(16, 4, "segments", lambda: next(draws)) == [0, 7, 10, 13]  # one draw per segment
    assert frame_indices(16, 4, "uniform", lambda: 0.99) == [3, 7, 11, 15]  # one shift for the whole grid
    rng = random.Random(0)
    for _ in range(100):
        picks = frame_indices(30, 8, rng.choice(["uniform", "segments"]), rng.random)
        assert picks == sorted(picks) and picks[0] >= 0 and picks[-1] < 30


def test_a_clip_shorter_than_k_frames_repeats_frames() -> None:
    assert frame_indices(3, 8, "uniform") == [0, 0, 0, 1, 1, 2, 2, 2]
    assert len(frame_indices(1, 8, "segments", random.random)) == 8


def test_augmentation_is_one_crop_for_every_frame_of_a_clip(tmp_path: Path) -> None:
    static = np.repeat(np.random.default_rng(1).integers(0, 255, (1, 40, 40, 3), dtype=np.uint8), 6, axis=0)
    path = str(write_video(tmp_path / "static.mkv", static))
    preprocess = ImagePreprocess(size=24)
    random.seed(3)
    views = [clip_tensor(path, preprocess, 4, "uniform", augment=True, decoded=DecodedClips()) for _ in range(3)]
    for view in views:
        assert view.shape == (4, 3, 24, 24)
        assert torch.allclose(view[0], view[3], atol=0.05)  # one crop box for the clip (codec noise aside)
    assert not torch.allclose(views[0], views[1], atol=0.05)  # but another one for each draw
    plain = clip_tensor(path, preprocess, 4, "uniform", decoded=DecodedClips())
    assert torch.equal(plain, clip_tensor(path, preprocess, 4, "uniform", decoded=DecodedClips()))


def test_a_clip_is_decoded_once(clips: dict[str, list[Path]]) -> None:
    decoded, preprocess = DecodedClips(), ImagePreprocess(size=24)
    for _ in range(3):
        clip_tensor(str(clips["shrink-grow"][0]), preprocess, 4, "segments", augment=True, decoded=decoded)
    assert decoded.decodes == 1


# --- bad files --------------------------------------------------------------------------------------------


def test_corrupt_and_empty_videos_are_named(tmp_path: Path, clips: dict[str, list[Path]]) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clips["grow"][0].read_bytes()[:300])
    for bad in (empty, garbage, cut):
        with pytest.raises(UserError, match=re.escape(bad.name)):
            check_video(bad)


def test_unreadable_videos_are_skipped_and_counted_when_allowed(tmp_path: Path, clips: dict[str, list[Path]]) -> None:
    for label in ("left", "right"):
        (tmp_path / label).mkdir()
        for n in range(2):
            (tmp_path / label / f"{n}.mp4").write_bytes(clips["grow"][n].read_bytes())
    (tmp_path / "left" / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(UserError, match=r"broken\.mp4"):
        read_examples(tmp_path, "video")
    with pytest.warns(InputWarning, match="left out 1 unreadable video"):
        examples = read_examples(tmp_path, "video", skip_unreadable=True)
    assert len(examples) == 4 and not any("broken" in e.input for e in examples)


# --- inflation -------------------------------------------------------------------------------------------


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def test_an_inflated_network_gives_the_2d_output_on_a_static_clip() -> None:
    image_net = _tiny_cnn()
    video_net = _tiny_cnn()
    names = [name for name, _ in video_net.named_parameters()]
    assert inflate(video_net, time_kernel=3) == 2  # the 3x3 convolutions; the 1x1 stays per frame
    assert [name for name, _ in video_net.named_parameters()] == names
    assert video_net[0].weight.shape == (8, 3, 3, 3, 3)
    frame = torch.randn(2, 3, 16, 16)
    static = frame.unsqueeze(1).repeat(1, 5, 1, 1, 1)  # (B, T, C, H, W)
    set_frames(video_net, 5)
    with torch.no_grad():
        out = video_net(static.flatten(0, 1)).unflatten(0, (2, 5))
        expected = image_net(frame)
    for t in range(5):
        torch.testing.assert_close(out[:, t], expected, atol=1e-5, rtol=1e-5)
    moving = torch.randn(2, 5, 3, 16, 16)
    with torch.no_grad():
        mixed = video_net(moving.flatten(0, 1)).unflatten(0, (2, 5))
        alone = image_net(moving.flatten(0, 1)).unflatten(0, (2, 5))
    assert not torch.allclose(mixed, alone, atol=1e-3)  # on motion, frames now see their neighbours


def test_efficientnet_lite0_inflates_with_its_static_same_padding() -> None:
    from graftune.backbones import load_backbone

    image_body = load_backbone("efficientnet-lite0", image_size=32).body.eval()
    video_body = load_backbone("efficientnet-lite0", image_size=32).body.eval()
    inflate(video_body, 3)
    assert any(isinstance(m, InflatedConv) for m in video_body.modules())
    frame = torch.randn(1, 3, 32, 32)
    set_frames(video_body, 4)
    with torch.no_grad():
        out = video_body(pixel_values=frame.repeat(4, 1, 1, 1))
        expected = image_body(pixel_values=frame)
    torch.testing.assert_close(out, expected.repeat(4, 1, 1, 1), atol=1e-4, rtol=1e-4)


def test_a_convolution_that_cannot_inflate_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(UserError, match="cannot inflate"):
        inflate(net, 3)
    with pytest.raises(UserError, match="no 2D convolution"):
        inflate(nn.Sequential(nn.Linear(3, 4)), 3)


# --- temporal heads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mean", "conv", "attention"])
def test_temporal_heads_map_frames_to_logits(kind: str) -> None:
    head = build_temporal_head(kind, HeadConfig(), feature_dim=12, frames=6, classes=4)
    assert head(torch.randn(3, 6, 12)).shape == (3, 4)


def test_only_a_temporal_head_tells_a_sequence_from_its_reversal() -> None:
    """Sequences and their reversals: mean pooling sees the same average and stays at chance; the
    temporal convolution learns the order."""
    torch.manual_seed(0)
    forward = torch.cumsum(torch.randn(64, 6, 8), dim=1)
    features = torch.cat([forward, forward.flip(1)])
    labels = torch.cat([torch.zeros(64), torch.ones(64)]).long()
    accuracy = {}
    for kind in ("mean", "conv"):
        torch.manual_seed(0)
        head = build_temporal_head(kind, HeadConfig(dropout=0.0), feature_dim=8, frames=6, classes=2, width=32)
        optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
        for _ in range(200):
            optimizer.zero_grad()
            nn.functional.cross_entropy(head(features), labels).backward()
            optimizer.step()
        accuracy[kind] = float((head(features).argmax(1) == labels).float().mean())
    assert accuracy["mean"] == pytest.approx(0.5, abs=0.05)
    assert accuracy["conv"] > 0.95


def test_the_clip_model_encodes_per_frame_features() -> None:
    torch.manual_seed(0)
    body = ImageBody(nn.Sequential(nn.Conv2d(3, 5, 3, padding=1)))
    model = ClipModel(body, build_temporal_head("conv", HeadConfig(), 5, 4, 3),
                      FramePooling("avg", frames=4, sampling="uniform")).eval()
    clips = torch.randn(2, 4, 3, 8, 8)
    encoded = model.encode({"pixel_values": clips})
    assert encoded.shape == (2, 4, 5)
    assert model({"pixel_values": clips}).shape == (2, 3)
    torch.testing.assert_close(model({"features": encoded}), model({"pixel_values": clips}))


# --- a Transformers video model ----------------------------------------------------------------------------


def test_a_transformers_video_model_takes_whole_clips(tmp_path: Path) -> None:
    """hf: VideoMAE (built from a config: no video weights install here) trains, saves and predicts on clips
    of its own frame count, with a pooled head on its tokens."""
    from rich.console import Console
    from transformers import VideoMAEConfig, VideoMAEModel

    import graftune

    torch.manual_seed(0)
    config = VideoMAEConfig(image_size=32, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2,
                            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    VideoMAEModel(config).save_pretrained(tmp_path / "videomae")
    data = tmp_path / "clips"
    write_motion_clips(data, per_class=4, frames=6, size=32, classes=("grow", "shrink"))
    result = graftune.train({"task": "video-classification", "model": {"source": f"hf:{tmp_path / 'videomae'}"},
                             "data": {"train": str(data)}, "train": {"epochs": 1, "batch_size": 4, "progress": False}},
                            tmp_path / "run", console=Console(quiet=True))
    settings = (result.dir / "config.yaml").read_text()
    assert "frames: 4" in settings and "pooling: mean" in settings  # the model's own frame count
    prediction = graftune.predict(result.dir, files=[str(next((data / "grow").glob("*.mp4")))])[0]
    assert set(prediction["probabilities"]) == {"grow", "shrink"}
    with pytest.raises(UserError, match="takes clips of 4 frames"):
        graftune.train({"task": "video-classification", "model": {"source": f"hf:{tmp_path / 'videomae'}"},
                        "data": {"train": str(data)}, "video": {"frames": 6}}, tmp_path / "run6",
                       console=Console(quiet=True))


# --- the body runs once with a frozen body ------------------------------------------------------------------


def _count_body_frames(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    forward = helpers.TinyResNet.forward

    def counted(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return forward(self, x)  # type: ignore[arg-type]

    monkeypatch.setattr(helpers.TinyResNet, "forward", counted)
    return seen


@pytest.mark.parametrize("cached", [True, False])
def test_a_frozen_body_decodes_and_runs_once(cached: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the feature cache, the body runs on the training clips' views and the validation clips once, in
    the first epoch, and on the test clips at the end (the threshold of this two-class model is chosen on
    the cached validation features); without it, every epoch. Either way every clip is
    decoded once: the decode cache serves the epochs that run the body."""
    from rich.console import Console

    import graftune
    from graftune.data import videos

    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))
    videos.DECODED._clips.clear()
    videos.DECODED.used = videos.DECODED.decodes = 0
    data = tmp_path / "clips"
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        write_motion_clips(data / split, per_class=2, frames=4, size=24, seed=seed, classes=("grow", "shrink"))
    seen = _count_body_frames(monkeypatch)
    epochs, frames, views = 3, 4, 2
    graftune.train({"task": "video-classification", "model": {"source": "module:helpers:tiny_cnn"},
                    "data": {"train": str(data / "train"), "val": str(data / "val"), "test": str(data / "test"),
                             "image_size": 16},
                    "freeze": {"body": "all"}, "video": {"frames": frames},
                    "cache": {"features": cached, "views": views, "dir": str(tmp_path / "cache")},
                    "train": {"epochs": epochs, "batch_size": 2, "progress": False,
                              "early_stopping": {"patience": None}}},
                   tmp_path / "run", console=Console(quiet=True), trust_code=True)
    probe = seen[0]  # the backbone's shape probe at load time
    clips = {"train": 4, "val": 4, "test": 4}
    body_frames = sum(seen) - probe
    if cached:
        assert body_frames == (clips["train"] * views + clips["val"] + clips["test"]) * frames
    else:  # two classes: after training the best model also reads validation once more, for its threshold
        assert body_frames == ((clips["train"] + clips["val"]) * epochs + clips["val"] + clips["test"]) * frames
    assert videos.DECODED.decodes == sum(clips.values())
    rows = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(('"cached_features": true' in row) == cached for row in rows)
