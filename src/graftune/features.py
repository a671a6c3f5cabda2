"""Cached features of a frozen body: while a stage trains only the head, the body runs once, not every epoch.

In a stage that trains only the head (a linear probe; the first stage of lp-ft, gradual, fastai and
ulmfit) the body is frozen and in inference mode, so the encoding of an example (`model.encode`: the
body and the task's neck, e.g. a classifier's pooled vector) is the same in every epoch. It is computed
once, in length-sorted batches, and the head trains on it. Encodings may have any shape per example
(a vector, per-frame vectors); targets are whatever the task's items hold.

`EpochLoaders` is the one boundary the training loop sees: each epoch it hands over the (train, val)
loaders, cached or live.

They are stored on disk (`cache.dir`) under a key that hashes everything that decides them: the
body's architecture and weights, the preprocessing (image size and normalisation, or the tokenizer
and token limit), the pooling, the numeric precision and device, and the content of every input
(text or image file bytes), in order. Any change gives a new key. A file whose key, checksum or shape
does not match (a crash mid-write, a disk error, a hand edit) is deleted and computed again.

Image augmentation changes the body's input every epoch. `cache.views` (default 4) caches that many
augmented views of each training image, and epoch e shows image i in view (e + i) mod K: K body
passes once instead of one per epoch, at the price of K crops per image instead of a new one every
epoch. `cache.views: 0` runs the body live on fresh crops every epoch; validation features, never
augmented, are cached either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from rich.console import Console
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from graftune.grafted import GraftedModel
from graftune.preprocessing import Preprocess, TextPreprocess
from graftune.sampling import FixedBatches

FORMAT = "graftune-features-3"  # part of every key: bump when extraction or augmentation code changes
Items = list[tuple[str, Any]]  # (input, target)
MakeCollate = Callable[[bool], Callable[[Items], dict[str, Any]]]  # augment -> collate


def default_cache_dir(configured: str | None = None) -> Path:
    """`cache.dir`, else $GRAFTUNE_CACHE_DIR, else $XDG_CACHE_HOME/graftune/features (~/.cache/...)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("GRAFTUNE_CACHE_DIR"):
        return Path(os.environ["GRAFTUNE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graftune" / "features"


# ----------------------------------------------------------------------------------------- keys

def fingerprint_body(body: nn.Module) -> str:
    """Hash of the body's architecture (module tree and model config) and every weight and buffer."""
    digest = hashlib.blake2b(repr(body).encode(), digest_size=20)
    configs: list[Any] = [getattr(m, "config", None) for m in body.modules()]
    config = next((c for c in configs if hasattr(c, "to_json_string")), None)  # a Transformers model's config
    if config is not None:
        digest.update(config.to_json_string().encode())
    for name, tensor in body.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


def fingerprint_preprocess(preprocess: Preprocess) -> str:
    """Hash of the input preparation: size, mean, std, crop or token limit, and the tokenizer itself."""
    parts = [json.dumps(preprocess.to_json(), sort_keys=True)]
    if isinstance(preprocess, TextPreprocess):
        parts.append(_tokenizer_spec(preprocess.tokenizer))
    return _hash(parts)


def _tokenizer_spec(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return type(tokenizer).__name__ + json.dumps(sorted(tokenizer.get_vocab().items()))
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)  # settings left behind by the last call, not part of the tokenizer
    spec.pop("padding", None)
    return json.dumps(spec, sort_keys=True)


def fingerprint_inputs(inputs: Sequence[str], modality: str) -> str:
    """Hash of every input's content, in order: the text itself, or the bytes of the image file."""
    digest = hashlib.blake2b(modality.encode(), digest_size=20)
    for item in inputs:
        data = item.encode("utf-8") if modality == "text" else Path(item).read_bytes()
        digest.update(hashlib.blake2b(data, digest_size=20).digest())
    return digest.hexdigest()


def _hash(parts: Sequence[str]) -> str:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=20).hexdigest()


def _checksum(features: torch.Tensor) -> str:
    return hashlib.blake2b(_raw_bytes(features), digest_size=20).hexdigest()


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# ---------------------------------------------------------------------------------------- store

class FeatureStore:
    """Feature tensors on disk, one safetensors file per key, written atomically and checked on load."""

    def __init__(self, folder: Path, console: Console | None = None) -> None:
        self.folder = folder
        self.console = console or Console(stderr=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def load(self, key: str, count: int) -> torch.Tensor | None:
        """The features stored under `key` for `count` examples; None when absent, partial or corrupt."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                features = handle.get_tensor("features")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            problem = f"unreadable ({str(err)[:80]})"
        else:
            if meta.get("key") != key or features.dim() < 3 or features.shape[1] != count:
                problem = "written for other inputs"
            elif meta.get("checksum") != _checksum(features):
                problem = "damaged (checksum mismatch)"
            else:
                return features
        self.console.print(f"feature cache: {path.name} is {problem}; computing it again")
        path.unlink(missing_ok=True)
        return None

    def save(self, key: str, features: torch.Tensor) -> None:
        """Write atomically (temporary file, then rename), so a crash never leaves a file that looks whole."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.{os.getpid()}.tmp"
            save_file({"features": features.contiguous()}, str(tmp),
                      metadata={"key": key, "checksum": _checksum(features), "format": FORMAT})
            os.replace(tmp, self.path(key))
        except OSError as err:  # a read-only or full disk costs speed next time, not this run
            self.console.print(f"feature cache: cannot write to {self.folder} ({err}); features kept in memory only")


# ----------------------------------------------------------------------------------- extraction

def extract_features(model: GraftedModel, items: Items, collate: Callable[[Items], dict[str, Any]],
                     batches: Sequence[list[int]], accelerator: Any, num_workers: int = 0) -> torch.Tensor:
    """Encodings (N, ...) of `items`, in item order; `batches` say which items go together."""
    loader: DataLoader[Any] = DataLoader(items, batch_sampler=batches, collate_fn=collate,  # type: ignore[arg-type]
                                         num_workers=num_workers)
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for indices, batch in zip(batches, loader, strict=True):
            inputs = {name: value.to(accelerator.device) for name, value in batch["inputs"].items()}
            with accelerator.autocast():
                features = model.encode(inputs).float().cpu()
            if out is None:
                out = torch.empty(len(items), *features.shape[1:])
            out[indices] = features
    model.train(was_training)
    return out if out is not None else torch.empty(0, 0)


class CachedFeatures(Dataset[tuple[torch.Tensor, Any]]):
    """Encodings (views, N, ...) with targets; in epoch e, example i comes in view (e + i) mod views."""

    def __init__(self, features: torch.Tensor, targets: list[Any]) -> None:
        self.features, self.targets, self.epoch = features, targets, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.features[(self.epoch + index) % self.features.shape[0], index], self.targets[index]


def collate_features(items: list[tuple[torch.Tensor, Any]]) -> dict[str, Any]:
    """A batch the model's forward takes as it is: `features` skip the body (see GraftedModel)."""
    return {"inputs": {"features": torch.stack([f for f, _ in items])},
            "targets": default_collate([target for _, target in items])}


# ---------------------------------------------------------------------------------------- feeds

@dataclass
class Split:
    """One split's items, with how to batch them for extraction."""

    items: Items
    batches: FixedBatches  # length-sorted for text; in order for images


@dataclass
class FeatureFeeds:
    """Loaders of cached features for the stages that train only the head, built on first use.

    `views`: how many training views to cache: 1 without augmentation, K with it, 0 to keep training
    live (augmentation with cache.views 0, or mixup/cutmix, which mix the body's inputs).
    """

    model: GraftedModel
    accelerator: Any
    make_collate: MakeCollate
    train: Split
    val: Split
    train_batches: Any  # the live loader's batch sampler: cached epochs see the same batches
    views: int
    augment: bool
    store: FeatureStore
    preprocess: Preprocess
    modality: str
    seed: int
    num_workers: int = 0
    console: Console | None = None
    _loaders: tuple[Any, Any] | None = None

    def loaders(self) -> tuple[Any | None, Any]:
        """(train, val) loaders over cached features; train is None when it stays live."""
        if self._loaders is None:
            started = time.perf_counter()
            with _random_state_kept():  # the epoch's dropout and shuffles draw as if nothing ran here
                key = stage_key(self.model.body, self.preprocess, repr(self.model.neck), self.accelerator)
                train = self._train_loader(key) if self.views else None
                val = self._loader(self._split_features(key, self.val, augment=False, views=1), self.val, None)
            self._loaders = (train, val)
            if self.console:
                self.console.print(f"feature cache: body features ready in {time.perf_counter() - started:.1f} s "
                                   f"({self.store.folder})")
        return self._loaders

    def encodings(self, split: Split) -> torch.Tensor:
        """The body's plain (unaugmented) encodings of `split`'s items (N, ...), from the cache or computed
        into it, under the same key a training run's validation features use."""
        with _random_state_kept():
            key = stage_key(self.model.body, self.preprocess, repr(self.model.neck), self.accelerator)
            return self._split_features(key, split, augment=False, views=1)[0]

    def _train_loader(self, key: str) -> Any:
        features = self._split_features(key, self.train, augment=self.augment, views=self.views)
        return self._loader(features, self.train, self.train_batches)

    def _loader(self, features: torch.Tensor, split: Split, batches: Any) -> Any:
        """Validation batches sharded by Accelerate; training batches already sharded by their sampler."""
        from accelerate.data_loader import prepare_data_loader

        dataset = CachedFeatures(features, [target for _, target in split.items])
        loader: DataLoader[Any] = DataLoader(dataset, batch_sampler=split.batches if batches is None else batches,
                                             collate_fn=collate_features)
        if batches is None:
            return self.accelerator.prepare_data_loader(loader)
        return prepare_data_loader(loader, device=self.accelerator.device, num_processes=1, process_index=0,
                                   put_on_device=True)

    def _split_features(self, stage: str, split: Split, augment: bool, views: int) -> torch.Tensor:
        inputs = fingerprint_inputs([x for x, _ in split.items], self.modality)
        key = _hash([FORMAT, stage, inputs, f"augment={augment}", f"views={views}",
                     f"seed={self.seed if augment else ''}"])
        with self.accelerator.main_process_first():  # one process computes, the others read the file
            cached = self.store.load(key, len(split.items))
            if cached is not None:
                return cached
            collate = self.make_collate(augment)
            stacked = []
            for view in range(views):
                if augment:
                    set_seed(self.seed * 7_919 + view)  # the same crops every time for this key
                stacked.append(extract_features(self.model, split.items, collate, split.batches, self.accelerator,
                                                self.num_workers))
            features = torch.stack(stacked)
            if self.accelerator.is_main_process:
                self.store.save(key, features)
            return features


@contextmanager
def _random_state_kept() -> Iterator[None]:
    python, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python)
    np.random.set_state(numpy_state)


def stage_key(body: nn.Module, preprocess: Preprocess, neck: str, accelerator: Any) -> str:
    """What decides an encoding besides the input: the body, its preprocessing, the neck, the precision."""
    return _hash([fingerprint_body(body), fingerprint_preprocess(preprocess), neck,
                  str(accelerator.mixed_precision), accelerator.device.type])


@dataclass(frozen=True)
class EpochFeed:
    train: Any
    val: Any
    cached: bool  # the training batches are cached encodings: the body does not run

    @property
    def cached_train(self) -> CachedFeatures | None:
        """Every cached training encoding at once (all views), for a head solved on the whole set."""
        dataset = getattr(self.train, "dataset", None)
        return dataset if self.cached and isinstance(dataset, CachedFeatures) else None


@dataclass
class EpochLoaders:
    """Each epoch's (train, val) loaders: cached encodings while `head_only()` (nothing in the body can
    change), the live loaders otherwise. The loop never knows which it got."""

    train: Any
    val: Any
    cache: FeatureFeeds | None
    head_only: Callable[[], bool]

    def for_epoch(self) -> EpochFeed:
        if self.cache is None or not self.head_only():
            return EpochFeed(self.train, self.val, cached=False)
        train, val = self.cache.loaders()
        return EpochFeed(train if train is not None else self.train, val, cached=train is not None)
