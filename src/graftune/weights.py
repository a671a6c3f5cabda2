"""Weights on disk, read and written safely: safetensors, or torch.load(weights_only=True). Never pickled code.

Used by every place that touches weights: a user's weights file for a `module:` source, checkpoints,
the best model and the saved model folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from graftune.errors import UserError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a user's state dict from .safetensors or a torch file, unwrapping {"state_dict": ...} checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found.")
    try:
        state: object = load_file(str(path)) if path.suffix == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any decoding failure is the file's fault, not graftune's
        raise UserError(f"{path}: cannot read weights ({str(err).splitlines()[0][:200]}). Save them with "
                        "safetensors or torch.save(model.state_dict(), path).") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in state.items()}


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
