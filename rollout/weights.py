"""Weights between the learner and the rollout engines: named numpy arrays out, checksums to verify.

    pairs = named_arrays(learner.model)             # [(name, np.ndarray)], zero-copy views on CPU
    engine.begin_weight_update(); engine.update_weights(pairs); engine.finish_weight_update(step)
    assert engine.weights_checksum() == checksums(learner.model)

A checksum is blake2b over the parameter's bytes as float32, per parameter name, so both ends hash
exactly what they hold. Tied parameters (an embedding shared with the LM head) appear once, under
the first name `named_parameters()` gives. Used by the learner (`named_arrays`, `checksums`), the
engines (`load_into`, `checksums`) and the weight transports (rollout/transfer.py), which build on
these functions.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch


def named_arrays(model: torch.nn.Module) -> list[tuple[str, np.ndarray]]:
    """Every parameter as a float32 numpy array (a view when it is already fp32 on CPU)."""
    return [(name, p.detach().float().cpu().numpy()) for name, p in model.named_parameters()]


def checksum(array: np.ndarray | torch.Tensor) -> str:
    if isinstance(array, torch.Tensor):
        array = array.detach().float().cpu().numpy()
    return hashlib.blake2b(np.ascontiguousarray(array, dtype=np.float32).tobytes(),
                           digest_size=16).hexdigest()


def checksums(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, str]:
    """{parameter name: checksum} of the weights the model computes with (cast to `dtype` first, when given:
    what an engine holding them in that dtype reports)."""
    return {name: checksum(p if dtype is None else p.detach().to(dtype))
            for name, p in model.named_parameters()}


def load_into(model: torch.nn.Module, named_weights) -> set[str]:
    """Copy (name, array) pairs into `model`'s parameters in place; returns the names loaded.

    Raises naming the parameter when a name is unknown or a shape differs: a half-applied update
    must not look like a successful one.
    """
    params = dict(model.named_parameters())
    loaded = set()
    with torch.no_grad():
        for name, value in named_weights:
            if name not in params:
                raise KeyError(f"weight update names parameter {name!r}, which the engine's model does not "
                               "have")
            param = params[name]
            with warnings.catch_warnings():  # a read-only view from Ray's object store: we only read it
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                tensor = torch.as_tensor(value)
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(f"weight update for {name!r} has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(param.shape)}")
            param.copy_(tensor)
            loaded.add(name)
    return loaded
