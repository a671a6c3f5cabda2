"""graftune: fine-tune pre-trained neural networks for a new task.

Example:
    >>> import graftune
    >>> run = graftune.train({"task": "text-classification", "model": {"source": "minilm-l6"},
    ...                       "data": {"train": "news/"}}, out="runs/news")
    >>> run.test["accuracy"]
    >>> graftune.predict("runs/news", texts=["Shares fell sharply on Monday"])
"""

from graftune.api import evaluate, load, predict, train
from graftune.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__", "evaluate", "load", "predict", "train"]
