"""Machine-dependent defaults: bf16 only where the hardware computes it natively; loader workers only
where a GPU computes while the CPU decodes images."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import pytest
import torch
import yaml
from rich.console import Console

import graftune
from graftune.hardware import cpu_has_native_bf16, resolve_precision, resolve_workers

INTEL = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n"
OLD = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"


def test_cpu_flags(tmp_path: Path) -> None:
    (tmp_path / "new").write_text(INTEL)
    (tmp_path / "old").write_text(OLD)
    assert cpu_has_native_bf16(tmp_path / "new")
    assert not cpu_has_native_bf16(tmp_path / "old")
    assert not cpu_has_native_bf16(tmp_path / "missing")  # not Linux: keep fp32


def test_explicit_choices_are_kept() -> None:
    for choice in ("no", "fp16", "bf16"):
        assert resolve_precision(choice) == choice


def test_auto_on_a_cpu_follows_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("graftune.hardware.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr("graftune.hardware.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto") == "no"


def test_loader_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_workers(3, "text") == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_workers("auto", "image") == 0  # the CPU computes: workers would take its cores
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert resolve_workers("auto", "image") == 8
    assert resolve_workers("auto", "text") == 0
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert resolve_workers("auto", "image") == 1


def test_runs_in_one_process_may_use_different_precisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run computes in its own precision: bf16 changes the numbers, and fp32 after it gives exactly
    the numbers of fp32 before it (the precision of the previous run does not linger)."""
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))
    data = helpers.write_colour_folders(tmp_path / "colours")
    losses = []
    for i, precision in enumerate(("no", "bf16", "no")):
        config = {"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
                  "data": {"train": str(data), "image_size": 16, "augment": False}, "freeze": {"body": 2},
                  "train": {"epochs": 1, "batch_size": 8, "progress": False, "mixed_precision": precision}}
        run = graftune.train(config, out=tmp_path / str(i), console=Console(quiet=True))
        assert yaml.safe_load((run.dir / "config.yaml").read_text())["train"]["mixed_precision"] == precision
        row = json.loads((run.dir / "metrics.jsonl").read_text().splitlines()[0])
        losses.append((row["train_loss"], row["val_loss"]))
    assert losses[0] == losses[2]
    assert losses[1] != losses[0] and losses[1] == pytest.approx(losses[0], rel=0.05)


def test_inference_devices_are_checked_by_name() -> None:
    from graftune.errors import UserError
    from graftune.hardware import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="--device tpu0: not a device"):
        resolve_device("tpu0")
    with pytest.raises(UserError, match="--device meta: graftune runs inference on cpu or cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"--device cuda:1: this machine has 0 CUDA GPU\(s\).*--device cpu"):
            resolve_device("cuda:1")


def test_a_grafted_model_takes_its_inputs_to_its_own_device() -> None:
    """predict encodes on the CPU; the model on another device (here `meta`, which every machine has) gets them
    there instead of failing on a device mismatch."""
    from torch import nn

    from graftune.grafted import GraftedModel

    model = GraftedModel(nn.Flatten(), nn.Linear(12, 2)).to("meta")
    out = model({"input": torch.ones(3, 12)})
    assert out.device.type == "meta" and out.shape == (3, 2)
