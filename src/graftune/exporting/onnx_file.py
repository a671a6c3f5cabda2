"""ONNX: `torch.onnx.export` with the torch.export-based (dynamo) exporter, checked with ONNX Runtime.

Why the dynamo exporter: it is torch's default and supported path since 2.9 (the TorchScript-based one is
deprecated and traces Python branches on shapes as constants: Transformers' masking code warns of exactly
that), and it records the batch and sequence axes as symbolic dimensions with torch.export's guards. It
needs onnxscript. The graph takes the inputs by name (`input_ids`, `attention_mask`; or `pixel_values`)
and gives `logits`; the labels, the preprocessing and the task ride along in the file's metadata_props
(`graftune.labels`, `graftune.preprocessing`, `graftune.task`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
from torch import nn

from graftune.errors import UserError
from graftune.exporting.batches import OUTPUT, Graph, Inputs

FILE = "model.onnx"
EXTERNAL_DATA_BYTES = 1_500_000_000  # above this the weights go to model.onnx.data (protobuf stops at 2 GB)


def require_onnx() -> None:
    """Refuse before any work when the packages the export and its check need are missing."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if not _importable(name)]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: pip install 'graftune[export]' (or pip install "
                        f"{' '.join(missing)}).")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def write_onnx(model: nn.Module, example: Inputs, axes: dict[str, dict[int, str]], path: Path,
               metadata: dict[str, str]) -> str:
    """Export `model` traced on `example` with `axes` dynamic; returns what exported it."""
    import torch

    graph = Graph(model, example.names).eval()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        with _quiet():
            program = torch.onnx.export(graph, example.ordered(), input_names=example.names, output_names=[OUTPUT],
                                        dynamo=True, dynamic_shapes=(tuple(axes[n] for n in example.names),),
                                        verbose=False)
    except Exception as err:  # the exporter's own errors are many types; its first line says what failed
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UserError(f"--format onnx: torch.onnx could not export this model ({first}). Try --format "
                        "torchscript.") from None
    assert program is not None
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=size > EXTERNAL_DATA_BYTES)
    return f"torch.onnx.export (dynamo) {torch.__version__}, opset {program.model.opset_imports.get('', '?')}"


def run_onnx(path: Path, inputs: Inputs) -> np.ndarray:
    """The exported file's `logits` on the batch, by ONNX Runtime on the CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    output: np.ndarray = session.run([OUTPUT], {name: t.numpy() for name, t in inputs.tensors.items()})[0]
    return output


def runtime() -> str:
    return f"ONNX Runtime {version('onnxruntime')}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress warnings and log lines (torchvision ops it skips) are not the user's concern."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
