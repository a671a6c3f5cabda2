"""PNG plots in the run directory: learning curves of any task, a classifier's test confusion matrix, and the
loss against the rate of a learning-rate range test."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt


def learning_curves(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Training and validation loss per epoch, beside the validation metric that picks the best epoch."""
    epochs = [r["epoch"] for r in rows]
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_ax.legend()
    metric_ax.plot(epochs, [r[metric] for r in rows], marker="o", color="tab:green")
    metric_ax.set(xlabel="epoch", ylabel=metric, title=f"Validation {metric.removeprefix('val_')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix_plot(matrix: list[list[int]], labels: list[str], path: Path) -> None:
    labels = [plain(label) for label in labels]
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title="Test confusion matrix")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def lr_find_plot(rates: list[float], losses: list[float], smoothed: list[float], suggestions: dict[str, float],
                 chosen: str, title: str, path: Path) -> None:
    """Loss against rate on a log axis: each step's loss faintly, the smoothed loss the rules read (which sets
    the vertical range), and the suggested rates as vertical lines (the chosen one solid)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [(r, raw, smooth) for r, raw, smooth in zip(rates, losses, smoothed, strict=True)
              if math.isfinite(raw) and math.isfinite(smooth)]
    if finite:
        xs, raws, smooths = zip(*finite, strict=True)
        ax.plot(xs, raws, color="tab:blue", alpha=0.25, label="loss per step")
        ax.plot(xs, smooths, color="tab:blue", label="smoothed loss")
        low, high = min(smooths), max(smooths)
        margin = 0.1 * (high - low) or 0.1 * abs(high) or 0.1
        ax.set_ylim(low - margin, high + margin)  # single steps spike far above what the rules read
    for (name, rate), color in zip(suggestions.items(), ("tab:red", "tab:green", "tab:purple"), strict=False):
        ax.axvline(rate, color=color, linestyle="-" if name == chosen else ":",
                   label=f"{name} {rate:.3g}" + (" (chosen)" if name == chosen else ""))
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (optim.lr)", ylabel="training loss", title=plain(title))
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plain(text: str) -> str:
    """`text` as matplotlib should draw it: a `$` would otherwise start math mode (`$x$`, or a parse error)."""
    return text.replace("$", r"\$")
