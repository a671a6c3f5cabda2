"""A real full disk (a small tmpfs): the run stops with one message and exit 2, the previous epoch's
checkpoint intact, and once there is room the resume finishes it. Skipped where mounting is not allowed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest

from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def train(data: Path, out: Path, epochs: int) -> tuple[int, str]:
    return run_cli("train", "--task", "image-classification", "--model", "module:helpers:tiny_cnn", "--data", data,
                   "--set", "data.image_size=16", "--epochs", str(epochs), "--out", out)


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_full_disk_stops_the_run_and_the_resume_finishes_it(small_disk: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))
    data = helpers.write_colour_folders(tmp_path / "colours")
    code, output = train(data, small_disk / "probe", epochs=1)
    assert code == 0, output
    checkpoint = size(small_disk / "probe" / "checkpoints" / "epoch-0001")
    shutil.rmtree(small_disk / "probe")
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (free - int(1.5 * checkpoint) - 16_384))  # room for one epoch, not two

    code, output = train(data, small_disk / "run", epochs=3)
    message = " ".join(output.split())
    assert code == 2 and "Traceback" not in output, output
    assert "cannot write the checkpoint of epoch 2" in message and "the checkpoint of epoch 1 is intact" in message
    assert "No space left on device" in message and f"graftune train --resume {small_disk / 'run'}" in message
    last = json.loads((small_disk / "run" / "checkpoints" / "last.json").read_text())
    assert last == {"epoch": 1, "dir": "epoch-0001"}
    assert [json.loads(line)["epoch"] for line in (small_disk / "run" / "metrics.jsonl").read_text().splitlines()] \
        == [1]
    assert not [p for p in (small_disk / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]

    filler.unlink()
    code, output = run_cli("train", "--resume", small_disk / "run", "--trust-code")
    assert code == 0, output
    rows = [json.loads(line) for line in (small_disk / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_a_disk_that_fills_while_a_run_starts_names_the_run_and_keeps_nothing(small_disk: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Room for the new run's folder, not for its first files (config.yaml, data_splits.json): the write
    names no file, so the message names the run; the half-made folder is gone and the data untouched."""
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))
    data = helpers.write_colour_folders(tmp_path / "colours")
    before = {p: p.read_bytes() for p in data.rglob("*.png")}
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 8_192))

    code, output = train(data, small_disk / "run", epochs=1)
    message = " ".join(output.split())
    assert code == 2 and "Traceback" not in output, output
    assert f"{small_disk / 'run'}: cannot write the new run's files (No space left on device)" in message, message
    assert "run the same command again" in message and "a file" not in message
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    assert {p: p.read_bytes() for p in data.rglob("*.png")} == before


def test_a_write_that_names_no_file_names_the_commands_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's last resort for a full disk: Python's write() gives no file name, the --out folder stands in."""
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("graftune.api.range_test", full)
    (tmp_path / "run.yaml").write_text("task: image-classification\n")
    code, output = run_cli("lr-find", tmp_path / "run.yaml", "--out", tmp_path / "lr")
    message = " ".join(output.split())
    assert code == 2 and "Traceback" not in output, output
    assert f"{tmp_path / 'lr'}: No space left on device while writing into it" in message and "a file" not in message
