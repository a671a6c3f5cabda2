"""How close an export's outputs are to the run's PyTorch model, and the tolerance it must meet.

The tolerance is relative to the size of the outputs: the largest absolute difference must not exceed
`tolerance * max(1, largest absolute PyTorch output)`, with `tolerance` 1e-4 by default for fp32. Logits
within [-1, 1] are thus held to 1e-4 absolute; a language model's logits of size 20 to 2e-3, since float32
rounding grows with the numbers summed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from graftune.errors import UserError

TOLERANCE = 1e-4


@dataclass(frozen=True)
class Check:
    """An export's outputs against PyTorch's on one batch."""

    inputs: str  # where the batch came from
    examples: int
    runtime: str  # what ran the export: ONNX Runtime, torch.jit, Transformers
    max_abs_diff: float
    max_abs_output: float
    tolerance: float
    limit: float  # tolerance * max(1, max_abs_output)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (f"max |{self.runtime} - PyTorch| = {self.max_abs_diff:.3g} on {self.inputs} (limit {self.limit:.3g} "
                f"= {self.tolerance:g} x max(1, {self.max_abs_output:.3g}))")


def compare(exported: np.ndarray | torch.Tensor, expected: torch.Tensor, inputs: str, examples: int, runtime: str,
            tolerance: float, what: str) -> Check:
    """The check of `exported` against `expected`; a UserError that says what to do when it fails."""
    got = torch.as_tensor(np.asarray(exported) if isinstance(exported, np.ndarray) else exported).float()
    want = expected.float()
    if got.shape != want.shape:
        raise UserError(f"{what}: {runtime} gave outputs of shape {tuple(got.shape)}, PyTorch {tuple(want.shape)} on "
                        f"{inputs}; the export was not written. Report this model to graftune, or try another "
                        "--format.")
    scale = float(want.abs().max()) if want.numel() else 0.0
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    check = Check(inputs, examples, runtime, diff, scale, tolerance, tolerance * max(1.0, scale))
    if not diff <= check.limit:  # NaN fails too
        raise UserError(f"{what}: {check.line()}: above the limit, so the export was not written. Try another "
                        "--format, or accept the difference with --tolerance.")
    return check
