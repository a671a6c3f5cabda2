"""Which numeric precision a run computes in when `train.mixed_precision` is `auto`.

bf16 autocast (weights and optimizer stay fp32; matrix products run in bf16) where the hardware
computes bf16 natively: GPUs that support it, and CPUs with AVX512-BF16 or AMX instructions, where it
halves the time of a transformer's training step. fp16 with loss scaling on older GPUs. Plain fp32
everywhere else: emulated bf16 is slower than fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch

NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def resolve_precision(choice: str) -> str:
    """'no', 'fp16' or 'bf16' for Accelerate; `choice` other than 'auto' is kept as it is."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU advertises bf16 instructions (Linux; elsewhere False, so fp32 is kept)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool(NATIVE_BF16_FLAGS & set(flags))
