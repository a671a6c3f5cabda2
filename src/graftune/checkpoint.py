"""Training state for --resume, committed one epoch at a time: a kill at any instant leaves the previous
epoch's checkpoint or the new one, never a mix and never nothing.

    RUN/checkpoints/epoch-0003/   Accelerate's save_state: model.safetensors, optimizer.bin, random states and
                                  custom_checkpoint_0.pkl (the loop state: epoch, stage, best score, schedule);
                                  plus metrics.jsonl, the rows of every epoch up to this one
    RUN/checkpoints/last.json     {"epoch": 3, "dir": "epoch-0003"}: the checkpoint resume starts from
    RUN/checkpoints/best/model.safetensors   a hard link to the best epoch's weights

`commit` saves into a fresh temporary folder and fsyncs it, renames it into place, links the best weights,
then replaces last.json (the commit point: fsynced, renamed), then rewrites RUN/metrics.jsonl from the
rows the checkpoint holds and removes older epochs. Every path goes through the run's `Confined` files
(graftune/safe_files.py): no link is followed, and tidying removes only folders graftune wrote, never a
folder of the user's that happens to be named like a checkpoint. Resume reads last.json and takes the rows from the
checkpoint, so it never repeats or skips an epoch's row. A full or read-only disk stops the run with
one message and the previous checkpoint intact.

Saving through Accelerate means the same code holds sharded FSDP and DeepSpeed states. Loading is
safe: Accelerate reads weights with safetensors and everything else with `torch.load(weights_only=True)`,
except the registered loop state, which it unpickles in full; graftune reads that file with
`weights_only=True` first and refuses it unless it holds only tensors and plain values.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from graftune.errors import UserError
from graftune.faults import reached
from graftune.safe_files import Confined, fsync_folder

LOOP_STATE_FILE = "custom_checkpoint_0.pkl"  # Accelerate's name for the first registered object
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
LOW_SPACE = 64 * 2**20  # bytes: less free than this after a failed write, and the disk was full


@dataclass
class FitState:
    """Where the run is: saved in every checkpoint, including where the run is in its strategy."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float | None = None
    bad_epochs: int = 0  # epochs without improvement in the current stage
    stopped_early: bool = False
    converged: bool = False  # the last stage was solved exactly (graftune/probe.py): no epoch can improve it
    stage: int = 0
    stage_start: int = 1  # first epoch of the current stage


class LoopState:
    """What Accelerate checkpoints besides the model and optimizer (`register_for_checkpointing`): the
    loop's position and the schedule of the current stage, which a stage change replaces."""

    def __init__(self, fit: FitState, scheduler: Any) -> None:
        self.fit, self.scheduler = fit, scheduler

    def state_dict(self) -> dict[str, Any]:
        return {"fit": asdict(self.fit), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state["fit"].items():
            setattr(self.fit, key, value)  # the same object the loop holds
        self.scheduler.load_state_dict(state["scheduler"])


class Checkpoints:
    """RUN/checkpoints/: commit an epoch's state as one unit; find and read the last complete one."""

    def __init__(self, folder: Path, metrics: Path, files: Confined | None = None) -> None:
        """`files`: the run folder's (default: a Confined on the folder above `folder`, without manifest)."""
        self.folder, self.metrics = folder, metrics
        self.files = files if files is not None else Confined(folder.parent)
        self.pointer = folder / "last.json"
        self.best = folder / "best" / "model.safetensors"

    # --- reading ---------------------------------------------------------------------------------------

    def latest(self) -> Path | None:
        """The folder last.json names, or None before the first epoch was committed."""
        if not self.pointer.is_file() and not self.pointer.is_symlink():
            return None
        try:
            name = json.loads(self.files.read_text(self.pointer))["dir"]
        except (ValueError, KeyError, TypeError, OSError):
            raise UserError(f"{self.pointer}: damaged (not the JSON graftune writes). The run cannot resume from "
                            "it; start a new run.") from None
        path = self.folder / str(name)
        if path.parent != self.folder or path.name in ("", ".", "..") or path.is_symlink() or not path.is_dir():
            raise UserError(f"{self.pointer}: names {name}, which is not a checkpoint folder here. The run cannot "
                            "resume from it; start a new run.")
        return path

    def loop_state(self, path: Path) -> tuple[FitState, dict[str, Any]]:
        """The loop state of a checkpoint, read with weights_only=True (see the module docstring)."""
        try:
            state = torch.load(path / LOOP_STATE_FILE, map_location="cpu", weights_only=True)
            return FitState(**state["fit"]), state
        except Exception as err:  # anything but plain values, or a damaged file
            raise UserError(f"{path / LOOP_STATE_FILE}: not a loop state graftune wrote ({str(err)[:120]}). The "
                            "run cannot resume from it; start a new run.") from None

    def rows(self, path: Path) -> list[dict[str, Any]]:
        """The metrics rows committed with the checkpoint."""
        try:
            text = self.files.read_text(path / "metrics.jsonl")
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except (OSError, ValueError) as err:
            raise UserError(f"{path / 'metrics.jsonl'}: damaged ({err}). The run cannot resume from it.") from None

    def restore(self, accelerator: Any, path: Path) -> list[dict[str, Any]]:
        """Load the checkpoint into the prepared objects and registered loop state; make RUN/metrics.jsonl
        its rows again (dropping rows of epochs it does not hold); return those rows."""
        rows = self.rows(path)
        try:
            accelerator.load_state(str(path))
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise UserError(f"{path}: damaged checkpoint ({str(err).splitlines()[0][:160]}). The run cannot resume "
                            "from it; start a new run.") from None
        self.files.write_text(self.metrics, _jsonl(rows), durable=True)
        return rows

    # --- writing ---------------------------------------------------------------------------------------

    def commit(self, accelerator: Any, epoch: int, rows: list[dict[str, Any]], best: bool) -> None:
        """Write epoch `epoch`'s training state and metrics rows as one unit (see the module docstring)."""
        name = f"epoch-{epoch:04d}"
        final = self.folder / name
        tmp = self.folder / f".{name}.tmp"  # the name every process agrees on; the main process makes it new
        made = False
        try:
            if accelerator.is_main_process:
                self._clear(tmp, epoch)  # left by a run killed while saving
                self.files.mkdir(tmp)
                self.files.record(tmp, whole=True)
                made = True
            accelerator.wait_for_everyone()
            reached("checkpoint:begin", epoch)
            accelerator.save_state(str(tmp))
            if accelerator.is_main_process:
                (tmp / "metrics.jsonl").write_text(_jsonl(rows))
                _fsync_tree(tmp)
                reached("checkpoint:written", epoch)
                self._publish(tmp, final, epoch, rows, best)
        except Exception as err:
            reason = disk_refusal(err, self.folder)  # before the cleanup frees the space
            if made:
                shutil.rmtree(tmp, ignore_errors=True)  # made new above: nothing of the user's is in it
            if reason is None:
                raise
            raise UserError(self._disk_message(getattr(err, "filename", None), reason, epoch)) from None
        accelerator.wait_for_everyone()

    def _publish(self, tmp: Path, final: Path, epoch: int, rows: list[dict[str, Any]], best: bool) -> None:
        self._clear(final, epoch)  # a stale copy from a run killed before its commit point
        os.replace(tmp, final)
        self.files.adopt(final)
        fsync_folder(self.folder)
        reached("checkpoint:renamed", epoch)
        if best:
            self.files.link_or_copy(final / "model.safetensors", self.best)
        reached("checkpoint:best", epoch)
        self.files.write_text(self.pointer, json.dumps({"epoch": epoch, "dir": final.name}) + "\n", durable=True)
        reached("checkpoint:committed", epoch)
        self.files.write_text(self.metrics, _jsonl(rows), durable=True)
        reached("checkpoint:metrics", epoch)
        self.tidy(keep=final.name)

    def _clear(self, path: Path, epoch: int) -> None:
        """Remove what a killed run left at `path`; refuse when it is not graftune's (a user's folder or a link)."""
        self.files.remove(path)
        if path.exists() or path.is_symlink():
            raise UserError(f"{path}: in the way of the checkpoint of epoch {epoch}, and not a folder graftune "
                            "wrote; graftune leaves it as it is. Move it out of the run folder and run again.")

    def tidy(self, keep: str | None = None) -> None:
        """Remove temporary folders and epochs other than `keep` (default: the one last.json names) that graftune
        wrote; a folder of the user's named like them stays."""
        if not self.folder.is_dir():
            return
        if keep is None:
            latest = self.latest()
            keep = latest.name if latest else None
        for path in self.folder.iterdir():
            if path.is_dir() and path.name != keep and (path.name.startswith("epoch-") or path.name.endswith(".tmp")):
                self.files.remove(path)

    def _disk_message(self, filename: str | None, reason: str, epoch: int) -> str:
        latest = self.latest()
        kept = f"the checkpoint of epoch {latest.name.removeprefix('epoch-').lstrip('0')} is intact" if latest \
            else "no earlier checkpoint was written"
        return (f"{filename or self.folder}: cannot write the checkpoint of epoch {epoch} ({reason}); {kept}. "
                f"Free space or fix the permissions, then continue with: graftune train --resume "
                f"{self.folder.parent}")


def disk_refusal(err: BaseException, folder: Path) -> str | None:
    """Why the disk refused a write into `folder` (full, read-only, no permission), or None when `err` is
    something else.

    Python reports it as an OSError; torch.save and safetensors, which write from C++ and Rust, raise their
    own errors, with the system's words in the message or none at all ("unexpected pos 64768 vs 64656"),
    so the file system itself is asked too.
    """
    if isinstance(err, OSError):
        return err.strerror if err.errno in DISK_ERRORS else None
    text = str(err)
    for words in ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied"):
        if words in text:
            return words
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    first = text.strip().splitlines()[0][:120] if text.strip() else type(err).__name__
    if stats.f_flag & os.ST_RDONLY:
        return f"Read-only file system: {first}"
    if stats.f_bavail * stats.f_frsize < LOW_SPACE:
        return f"No space left on device: {first}"
    return None


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    fsync_folder(folder)
