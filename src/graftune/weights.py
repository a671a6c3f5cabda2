"""Weights on disk, read and written safely: safetensors, or torch.load(weights_only=True). Never pickled code.

Used by every place that touches weights: a user's weights file for a `module:` source, checkpoints,
the best model and the saved model folder.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from graftune.errors import UserError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written a zip archive since PyTorch 1.6
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format: a pickle (protocol 2 or later)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a user's state dict from .safetensors or a torch file, unwrapping {"state_dict": ...} checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found.")
    try:
        state: object = load_file(str(path)) if path.suffix == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any decoding failure is the file's fault, not graftune's
        raise UserError(f"{path}: cannot read weights: {_why_unreadable(path, err)}. Save them again with "
                        "torch.save(model.state_dict(), path) or safetensors.") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _why_unreadable(path: Path, err: Exception) -> str:
    """What is wrong with a weights file that did not load, in words: torch's own are an index error for an
    empty file, "[Errno 22]" for a truncated one, and for bytes that are no torch file advice to load it
    with weights_only=False, which would run any code in it."""
    with path.open("rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
    if not head:
        return "empty (0 bytes) or truncated; not a PyTorch weights file"
    if path.suffix == ".safetensors":
        return f"not a readable safetensors file ({_first_line(err)})"
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        return "not a PyTorch weights file (torch.save writes a zip archive) nor a .safetensors one"
    if head.startswith(ZIP_MAGIC) and not zipfile.is_zipfile(path):
        return "truncated or damaged: the zip archive that torch.save writes is incomplete"
    if "Weights only load failed" in str(err):
        return "it holds Python objects besides tensors, which graftune does not load (they could run code)"
    return f"damaged or not a PyTorch weights file ({_first_line(err)})"


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def load_into(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load weights strictly; on mismatch, name the missing and unexpected keys."""
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)} in the model" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise UserError(f"{where}: weights have other shapes than the model: {'; '.join(wrong[:3])}"
                        f"{' ...' if len(wrong) > 3 else ''}. Were they saved for another model or class count?")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:5]) or "none"
        unexpected = ", ".join(result.unexpected_keys[:5]) or "none"
        raise UserError(f"{where}: weights do not match the model. Missing keys: {missing}"
                        f"{' ...' if len(result.missing_keys) > 5 else ''}; unexpected keys: {unexpected}"
                        f"{' ...' if len(result.unexpected_keys) > 5 else ''}.")


def save_weights(model: nn.Module, path: Path) -> None:
    """Write a state dict as safetensors, atomically; tensors that share memory are written as copies."""
    seen: set[int] = set()
    state = {}
    for name, tensor in model.state_dict().items():
        pointer = tensor.data_ptr()
        state[name] = tensor.detach().clone().contiguous() if pointer in seen else tensor.detach().contiguous()
        seen.add(pointer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a file graftune wrote (checkpoint, best model, model folder) into the same architecture.

    Keys of a model saved inside DistributedDataParallel lose their `module.` prefix; a tensor stored once
    for several tied names (a language model's LM head and input embeddings) fills all of them.
    """
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: missing. The run is incomplete; train it again.") from None
    except Exception as err:  # safetensors reports damage as its own error type
        raise UserError(f"{path}: damaged ({str(err)[:160]}). Train the model again.") from None
    state = {key.removeprefix("module."): value for key, value in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise UserError(f"{path}: not the weights of this model ({str(err).splitlines()[0][:200]}).") from None
    pointers = {key: tensor.data_ptr() for key, tensor in model.state_dict(keep_vars=True).items()}
    loaded = {pointers[key] for key in state if key in pointers}
    untied = [key for key in result.missing_keys if pointers[key] not in loaded]
    if untied or result.unexpected_keys:
        raise UserError(f"{path}: not the weights of this model (missing {untied[:3]}, unexpected "
                        f"{result.unexpected_keys[:3]}).")
