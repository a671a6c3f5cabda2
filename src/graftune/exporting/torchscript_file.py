"""TorchScript: `torch.jit.trace` of the model on a synthetic batch, loaded back with `torch.jit.load`.

Tracing, not scripting: Transformers models and most image networks do not script. A trace records the
operations one batch ran, so Python branches on shapes are frozen; the check on the test split (another
batch size and, for text, another length than the trace) shows the trace generalises. torch 2.13 marks
torch.jit deprecated in favour of torch.export; ONNX is the format to prefer for serving.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from graftune.errors import UserError
from graftune.exporting.batches import Graph, Inputs

FILE = "model.pt"


def write_torchscript(model: nn.Module, example: Inputs, path: Path, metadata: dict[str, str]) -> str:
    """Trace `model` on `example` and save it with `metadata` as extra files (labels, preprocessing)."""
    graph = Graph(model, example.names).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings on frozen shape branches; the check below decides
            traced = torch.jit.trace(graph, example.ordered(), check_trace=False)
    except Exception as err:  # tracing fails with many error types; the first line says where
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UserError(f"--format torchscript: torch.jit.trace could not trace this model ({first}). Try --format "
                        "onnx.") from None
    torch.jit.save(traced, str(path), _extra_files=metadata)
    return f"torch.jit.trace {torch.__version__}"


@torch.inference_mode()
def run_torchscript(path: Path, inputs: Inputs) -> torch.Tensor:
    """The saved file, loaded back with torch.jit.load, on the batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    output: torch.Tensor = loaded(*inputs.ordered())
    return output
