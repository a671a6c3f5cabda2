"""`train.mixed_precision: auto`: bf16 only where the hardware computes it natively."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graftune.precision import cpu_has_native_bf16, resolve_precision

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
    monkeypatch.setattr("graftune.precision.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr("graftune.precision.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto") == "no"
