"""The feature cache: a frozen body runs once per head-only stage, results equal the live path, and the
cache on disk is keyed by content, invalidated by any change, and rebuilt when damaged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
from rich.console import Console

import graftune
from graftune.features import (
    FeatureStore,
    fingerprint_body,
    fingerprint_inputs,
    fingerprint_preprocess,
)
from graftune.preprocessing import ImagePreprocess, TextPreprocess

EPOCHS = 3


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))  # module:helpers:counting_cnn


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    return helpers.write_colour_folders(tmp_path / "colours")


def image_config(folder: Path, cache_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "task": "image-classification", "model": {"source": "module:helpers:counting_cnn"},
        "data": {"train": str(folder), "image_size": 16, "augment": False},
        "freeze": {"body": "all"}, "head": {"dropout": 0.0},
        "strategy": {"probe": "sgd"},  # epochs of SGD on the cache against the same epochs live
        "train": {"epochs": EPOCHS, "batch_size": 4, "progress": False, "early_stopping": {"patience": None}},
        "cache": {"dir": str(cache_dir)},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def run(config: dict[str, Any], out: Path) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """Train; return the examples the body saw, the metrics rows and the test metrics."""
    helpers.BODY_EXAMPLES["count"] = 0
    result = graftune.train(config, out=out, overwrite=True, console=Console(quiet=True))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return helpers.BODY_EXAMPLES["count"], rows, result.test


def split_sizes(out: Path) -> tuple[int, int]:
    splits = json.loads((out / "data_splits.json").read_text())
    return splits["train"]["count"], splits["val"]["count"]


def test_linear_probe_runs_the_body_once_and_matches_the_live_run(colours: Path, tmp_path: Path) -> None:
    live_count, live_rows, live_test = run(image_config(colours, tmp_path / "cache", cache={"features": False}),
                                           tmp_path / "live")
    count, rows, test = run(image_config(colours, tmp_path / "cache"), tmp_path / "cached")
    train, val = split_sizes(tmp_path / "cached")
    assert count == live_count - (EPOCHS - 1) * (train + val)  # one pass over train and val, not one per epoch
    assert [r["cached_features"] for r in rows] == [True] * EPOCHS
    assert [r["cached_features"] for r in live_rows] == [False] * EPOCHS
    for cached, plain in zip(rows, live_rows, strict=True):
        assert cached["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-5)
        assert cached["val_loss"] == pytest.approx(plain["val_loss"], abs=1e-5)
    assert test["accuracy"] == live_test["accuracy"] and test["loss"] == pytest.approx(live_test["loss"], abs=1e-5)

    again, _, _ = run(image_config(colours, tmp_path / "cache"), tmp_path / "again")
    assert again == live_count - EPOCHS * (train + val)  # everything came from the disk cache


def test_a_changed_input_file_invalidates_only_its_split(colours: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, _, _ = run(image_config(colours, cache), tmp_path / "one")
    assert len(list(cache.glob("*.safetensors"))) == 2  # train and val
    splits = json.loads((tmp_path / "one" / "data_splits.json").read_text())
    changed = Path(splits["train"]["items"][0])
    helpers.write_png(changed, (0, 0, 0))
    second, _, _ = run(image_config(colours, cache), tmp_path / "two")
    _, val = split_sizes(tmp_path / "one")
    assert second == first - val  # train recomputed, val read from disk
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_damaged_cache_files_are_rebuilt(colours: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, _, first_test = run(image_config(colours, cache), tmp_path / "one")
    for file in cache.glob("*.safetensors"):
        file.write_bytes(file.read_bytes()[:-7])  # a partial write
    second, _, second_test = run(image_config(colours, cache), tmp_path / "two")
    assert second == first and second_test["accuracy"] == first_test["accuracy"]
    assert all(FeatureStore(cache).path(f.stem) == f for f in cache.glob("*.safetensors"))


def test_augmented_views_run_the_body_views_times(colours: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base, _, _ = run(image_config(colours, cache, data={"augment": True}, cache={"features": False}),
                     tmp_path / "live")
    two, rows, _ = run(image_config(colours, cache, data={"augment": True}, cache={"views": 2}), tmp_path / "two")
    train, val = split_sizes(tmp_path / "two")
    assert two == base - (EPOCHS - 2) * train - (EPOCHS - 1) * val
    assert all(r["cached_features"] for r in rows)
    live_train, rows, _ = run(image_config(colours, tmp_path / "fresh", data={"augment": True}, cache={"views": 0}),
                              tmp_path / "zero")
    assert live_train == base - (EPOCHS - 1) * val  # fresh crops every epoch; validation still cached
    assert not any(r["cached_features"] for r in rows)


def test_only_head_only_stages_use_the_cache(colours: Path, tmp_path: Path) -> None:
    config = image_config(colours, tmp_path / "cache", freeze={"body": "none"}, strategy={"name": "gradual"})
    _, rows, _ = run(config, tmp_path / "gradual")
    assert [r["stage"] for r in rows] == ["head", "top-1", "top-2"]
    assert [r["cached_features"] for r in rows] == [True, False, False]
    _, rows, _ = run(image_config(colours, tmp_path / "cache", freeze={"batchnorm": "train"}), tmp_path / "bn")
    assert not any(r["cached_features"] for r in rows)  # BatchNorm statistics would move: no cache


def test_text_probe_with_the_cache_matches_the_live_run(bbc_folder: Path, tmp_path: Path) -> None:
    bert = helpers.write_tiny_bert(tmp_path / "bert", mean_pooling=True)
    config: dict[str, Any] = {
        "task": "text-classification", "model": {"source": f"hf:{bert}"},
        "data": {"train": str(bbc_folder), "max_length": 64}, "freeze": {"body": "all"},
        "strategy": {"probe": "sgd"}, "train": {"epochs": 2, "batch_size": 8, "progress": False},
        "cache": {"dir": str(tmp_path / "cache")},
    }
    cached = graftune.train(config, out=tmp_path / "cached", console=Console(quiet=True))
    config["cache"]["features"] = False
    live = graftune.train(config, out=tmp_path / "live", console=Console(quiet=True))
    rows = [[json.loads(line) for line in (r.dir / "metrics.jsonl").read_text().splitlines()] for r in (cached, live)]
    for a, b in zip(*rows, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
    assert cached.test["accuracy"] == live.test["accuracy"]


# --- the store and its keys ------------------------------------------------------------------------------


def test_store_round_trip_and_damage(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, Console(quiet=True))
    features = torch.randn(2, 5, 3)
    store.save("abc", features)
    assert torch.equal(store.load("abc", 5), features)  # type: ignore[arg-type]
    assert store.load("abc", 6) is None and not store.path("abc").exists()  # wrong size: discarded
    store.save("abc", features)
    raw = bytearray(store.path("abc").read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in the data
    store.path("abc").write_bytes(bytes(raw))
    assert store.load("abc", 5) is None and not store.path("abc").exists()
    store.path("abc").write_bytes(b"not a safetensors file")
    assert store.load("abc", 5) is None
    assert store.load("missing", 5) is None
    assert not list(tmp_path.glob(".*.tmp"))  # writes leave no temporary files behind


def test_body_fingerprint_sees_weights_buffers_and_architecture() -> None:
    model = helpers.body_of(helpers.tiny_cnn())
    key = fingerprint_body(model)
    assert fingerprint_body(helpers.body_of(helpers.tiny_cnn())) == key  # same content, same key
    with torch.no_grad():
        model.model.layer2[0].conv.weight[0, 0, 0, 0] += 1e-3
    assert fingerprint_body(model) != key
    other = helpers.body_of(helpers.tiny_cnn())
    other.model.layer1[0].bn.running_mean += 0.1  # type: ignore[operator]
    assert fingerprint_body(other) != key
    other = helpers.body_of(helpers.tiny_cnn())
    other.model.relu = torch.nn.GELU()  # same weights, another function
    assert fingerprint_body(other) != key


def test_preprocess_and_input_fingerprints(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    base = fingerprint_preprocess(ImagePreprocess(size=64))
    assert fingerprint_preprocess(ImagePreprocess(size=64)) == base
    assert fingerprint_preprocess(ImagePreprocess(size=96)) != base
    assert fingerprint_preprocess(ImagePreprocess(size=64, mean=(0.5, 0.5, 0.5))) != base
    tokenizer = AutoTokenizer.from_pretrained(str(helpers.write_tiny_bert(tmp_path / "bert")))
    text = fingerprint_preprocess(TextPreprocess(tokenizer, max_length=32))
    tokenizer(["call with truncation"], truncation=True, max_length=7)  # leaves state in the backend
    assert fingerprint_preprocess(TextPreprocess(tokenizer, max_length=32)) == text
    assert fingerprint_preprocess(TextPreprocess(tokenizer, max_length=64)) != text
    tokenizer.add_tokens(["graftune"])
    assert fingerprint_preprocess(TextPreprocess(tokenizer, max_length=32)) != text

    assert fingerprint_inputs(["a", "b"], "text") != fingerprint_inputs(["b", "a"], "text")
    image = helpers.write_png(tmp_path / "x.png")
    key = fingerprint_inputs([str(image)], "image")
    helpers.write_png(image, (1, 2, 3))
    assert fingerprint_inputs([str(image)], "image") != key
