"""Training checkpoints for --resume: weights, optimizer, schedule and loop state, loaded safely.

Random state is not stored: every epoch reseeds from (seed, epoch), so a resumed run draws the same
shuffles, crops and dropout masks as an uninterrupted one.

Everything is tensors and plain values, so `torch.load(weights_only=True)` reads it back: resuming
never unpickles code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graftune.weights import load_weights, save_weights


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], best: Path | None = None) -> None:
    """Write the last checkpoint; `state.json` goes last, so a checkpoint with it is complete.

    With `best`, the same weights also become the best model: linked (or copied) from the file just
    written instead of serialized a second time, and before `state.json`, which names the best epoch.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").unlink(missing_ok=True)
    save_weights(model, folder / "model.safetensors")
    if best is not None:
        share_file(folder / "model.safetensors", best / "model.safetensors")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save({"scheduler": scheduler.state_dict()}, folder / "scheduler.pt")
    (folder / "state.json").write_text(json.dumps(state, indent=2))


def share_file(source: Path, target: Path) -> None:
    """Make `target` hold what `source` holds now: a hard link where the file system has them, else a copy.
    Later writes replace `source` with a new file (save_weights renames), so the link keeps this version."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    tmp.replace(target)


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> dict[str, Any]:
    load_weights(model, folder / "model.safetensors")
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    extra = torch.load(folder / "scheduler.pt", weights_only=True)
    scheduler.load_state_dict(extra["scheduler"])
    state: dict[str, Any] = json.loads((folder / "state.json").read_text())
    return state


def checkpoint_state(folder: Path) -> dict[str, Any]:
    """The loop state of a complete checkpoint (epoch, stage, best score)."""
    state: dict[str, Any] = json.loads((folder / "state.json").read_text())
    return state


def has_checkpoint(folder: Path) -> bool:
    return (folder / "state.json").is_file()
