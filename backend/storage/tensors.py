"""Tensors as bytes for Redis (the processed target): one safetensors file with one tensor."""

from __future__ import annotations

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    return st_save({"tensor": t.detach().float().cpu().contiguous()})


def tensor_from_bytes(data: bytes) -> torch.Tensor:
    return st_load(data)["tensor"]
