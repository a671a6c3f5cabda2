"""Defaults that depend on the machine: numeric precision and data-loading processes.

`train.mixed_precision: auto` is bf16 autocast (weights and optimizer stay fp32; matrix products run
in bf16) where the hardware computes bf16 natively: GPUs that support it, and CPUs with AVX512-BF16 or
AMX instructions, where it halves the time of a transformer's training step. fp16 with loss scaling on
older GPUs. Plain fp32 everywhere else: emulated bf16 is slower than fp32.

`train.num_workers: auto` decodes images in worker processes while a GPU computes (up to 8, leaving a
core to the main process). On a CPU-only machine the CPU is the compute device, so workers would only
take cores from the model: 0. Texts are tokenized in the main process (fast tokenizers are fast).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from graftune.errors import UserError

NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def resolve_precision(choice: str) -> str:
    """'no', 'fp16' or 'bf16' for Accelerate; `choice` other than 'auto' is kept as it is."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


def resolve_device(choice: str = "auto") -> torch.device:
    """Where inference runs: `auto` is the GPU when there is one, else the CPU; `cpu`, `cuda`, `cuda:N` as
    given, refused by name when this machine has no such device."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise UserError(f"--device {choice}: not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {choice}: this machine has {torch.cuda.device_count()} CUDA GPU(s) visible to "
                        f"torch {torch.__version__}. Use --device cpu, or auto.")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {choice}: graftune runs inference on cpu or cuda; use auto, cpu, cuda or cuda:N.")
    return device


def resolve_workers(choice: int | str, modality: str) -> int:
    """Data-loader worker processes; a number other than 'auto' is kept as it is."""
    if choice != "auto":
        return int(choice)
    if modality not in ("image", "video") or not torch.cuda.is_available():
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU advertises bf16 instructions (Linux; elsewhere False, so fp32 is kept)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool(NATIVE_BF16_FLAGS & set(flags))
