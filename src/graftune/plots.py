"""Plots of a run: learning curves of any task, a classifier's test confusion matrix and reliability diagram,
the rates of every layer group through the stages, and the loss against the rate of a learning-rate range
test. `*_figure` functions return the matplotlib figure (the report embeds it); `*_png` ones its PNG bytes,
which the caller writes into the run folder (through its safe files, graftune/safe_files.py)."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt


def png(fig: Any, dpi: int = 100) -> bytes:
    """A figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def learning_curves_png(rows: list[dict[str, Any]], metric: str) -> bytes:
    """Training and validation loss per epoch, beside the validation metric that picks the best epoch."""
    return png(learning_curves_figure(rows, metric))


def learning_curves_figure(rows: list[dict[str, Any]], metric: str) -> Any:
    epochs = [r["epoch"] for r in rows]
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_ax.legend()
    metric_ax.plot(epochs, [r[metric] for r in rows], marker="o", color="tab:green")
    metric_ax.set(xlabel="epoch", ylabel=metric, title=f"Validation {metric.removeprefix('val_')}")
    fig.tight_layout()
    return fig


def confusion_matrix_png(matrix: list[list[int]], labels: list[str]) -> bytes:
    return png(confusion_matrix_figure(matrix, labels))


def confusion_matrix_figure(matrix: list[list[int]], labels: list[str]) -> Any:
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
    return fig


def rates_figure(rows: list[dict[str, Any]]) -> Any:
    """Each optimizer group's learning rate at the end of every epoch (a group is absent while it is frozen), on
    bands that mark the stages."""
    epochs = [r["epoch"] for r in rows]
    groups = list(dict.fromkeys(name.removesuffix("/no_decay") for r in rows for name in r.get("lr", {})))
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for name in groups:
        rates = [r.get("lr", {}).get(name, r.get("lr", {}).get(f"{name}/no_decay", math.nan)) for r in rows]
        ax.plot(epochs, rates, marker="o", label=plain(name))
    start = 0
    for i in range(1, len(rows) + 1):  # one band per run of epochs in the same stage
        if i == len(rows) or rows[i].get("stage_index") != rows[start].get("stage_index"):
            shade = 0.08 + 0.08 * (len(ax.patches) % 2)  # neighbouring stages alternate
            ax.axvspan(rows[start]["epoch"] - 0.5, rows[i - 1]["epoch"] + 0.5, alpha=shade, color="tab:gray")
            ax.text((rows[start]["epoch"] + rows[i - 1]["epoch"]) / 2, 1.01, plain(str(rows[start].get("stage", ""))),
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize="small")
            start = i
    # A linear axis: a schedule that decays to 0 at a stage's end records 0 there, which a log axis would hide.
    ax.set(xlabel="epoch", ylabel="learning rate (end of epoch)", ylim=(0, None))
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if groups:
        ax.legend(fontsize="x-small", ncol=max(1, len(groups) // 12), loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.subplots_adjust(left=0.08, right=0.78, bottom=0.14, top=0.9)  # fixed: a layout pass costs a drawing
    return fig


def reliability_figure(edges: list[float], accuracy: list[float], confidence: list[float], ece: float) -> Any:
    """Accuracy per confidence bin against the diagonal a calibrated model would follow (the bins' sizes are in
    the report's table)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    lefts, width = edges[:-1], edges[1] - edges[0]
    heights = [0.0 if math.isnan(a) else a for a in accuracy]
    ax.bar(lefts, heights, width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    gaps = [0.0 if math.isnan(c) else c - a for a, c in zip(heights, confidence, strict=True)]
    ax.bar(lefts, gaps, bottom=heights, width=width, align="edge", color="tab:red", alpha=0.3,
           label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="calibrated")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"Reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize="small")
    fig.subplots_adjust(left=0.15, right=0.95, bottom=0.13, top=0.9)
    return fig


def regression_figure(true: list[float], predicted: list[float], target: str) -> Any:
    """Predicted against true value (the diagonal is a perfect model), beside the residuals' histogram."""
    fig, (scatter, residuals) = plt.subplots(1, 2, figsize=(10, 4))
    scatter.scatter(true, predicted, s=12, alpha=0.6, color="tab:blue")
    low, high = min(*true, *predicted), max(*true, *predicted)
    scatter.plot([low, high], [low, high], linestyle="--", color="gray", label="predicted = true")
    scatter.set(xlabel=f"true {plain(target)}", ylabel=f"predicted {plain(target)}", title="Predicted against true")
    scatter.legend(loc="upper left", fontsize="small")
    errors = [p - t for t, p in zip(true, predicted, strict=True)]
    residuals.hist(errors, bins=min(30, max(5, len(errors) // 3)), color="tab:orange", edgecolor="black")
    residuals.axvline(0, color="gray", linestyle="--")
    residuals.set(xlabel="error (predicted - true)", ylabel="test examples", title="Residuals")
    fig.tight_layout()
    return fig


def lr_find_png(rates: list[float], losses: list[float], smoothed: list[float], suggestions: dict[str, float],
               chosen: str, title: str) -> bytes:
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
    return png(fig)


def plain(text: str) -> str:
    """`text` as matplotlib should draw it: a `$` would otherwise start math mode (`$x$`, or a parse error)."""
    return text.replace("$", r"\$")
