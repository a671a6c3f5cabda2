"""Shared fixtures: offline mode, and real data written as the folders a user would have."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import helpers
import pytest

# Fail fast on a wrong path instead of waiting on a hub that is not there.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


VISION_LIBS = ("timm", "torchvision")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `vision` skip, saying where they run, when timm or torchvision is not installed. Only
    looked up, never imported: importing a torchvision built for another torch breaks transformers here."""
    missing = [name for name in VISION_LIBS if importlib.util.find_spec(name) is None]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"needs {' and '.join(missing)}: runs in .venv-vision (scripts/vision-env.sh, "
                                   "then .venv-vision/bin/python -m pytest -m vision)")
    for item in items:
        if item.get_closest_marker("vision"):
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Feature caches of test runs go to a temporary folder, not the user's ~/.cache. Converted models (SmolLM2
    dequantized from its GGUF file, a few minutes on 2 cores) are kept once per machine in a test cache of their
    own, keyed by the source file's size and time as for users, so a second session does not convert again."""
    os.environ["GRAFTUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graftune-tests" / "models"
    os.environ.setdefault("GRAFTUNE_MODEL_CACHE", str(cache))


@pytest.fixture(scope="session")
def bbc_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 real BBC News articles per topic (80 in all) as TOPIC/NNN.txt."""
    from graftune.datasets import write_bbc_news

    return write_bbc_news(tmp_path_factory.mktemp("bbc"), per_class=16, seed=0)


@pytest.fixture(scope="session")
def fashion_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training and 6 test images per class."""
    return helpers.fashion_folders(tmp_path_factory.mktemp("fashion"), 12, 6)
