"""graftune: fine-tune pre-trained neural networks for a new task.

Example:
    >>> import graftune
    >>> run = graftune.train({"task": "text-classification", "model": {"source": "minilm-l6"},
    ...                       "data": {"train": "news/"}}, out="runs/news")
    >>> run.test["accuracy"]
    >>> graftune.predict("runs/news", texts=["Shares fell sharply on Monday"])

The API is imported on first use, so `import graftune.errors` or `graftune --help` does not load torch.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graftune.api import evaluate, export, load, predict, train
    from graftune.errors import UserError

__version__ = version("graftune")
__all__ = ["UserError", "__version__", "evaluate", "export", "load", "predict", "train"]


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "export", "load", "predict", "train"):
        from graftune import api

        return getattr(api, name)
    if name == "UserError":
        from graftune.errors import UserError

        return UserError
    raise AttributeError(f"module 'graftune' has no attribute {name!r}")
