"""The model file: one safetensors file with weights, target and metadata (docs/model-format.md).

Loading never unpickles: safetensors holds raw tensors and a JSON header only. A SHA-256 of the
metadata and tensor contents in the header catches files altered after they were written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .model import CHANNELS, FIRE_RATE, HIDDEN, NCA, PAPER_GRID, PERCEPTION_FILTERS

FORMAT_NAME = "growing-nca"
FORMAT_VERSION = "1"
MAX_MODEL_FILE_BYTES = 64 * 1024 * 1024
_OPTIMIZER_PREFIX = "optimizer."


class ModelFileError(ValueError):
    """The bytes are not a valid, untampered model file of ours."""


@dataclass
class ModelInfo:
    """Everything a model file says besides the weights."""

    channels: int = CHANNELS
    hidden: int = HIDDEN
    fire_rate: float = FIRE_RATE
    grid_height: int = PAPER_GRID  # the grid the model is meant to grow on (target + padding)
    grid_width: int = PAPER_GRID
    target_size: int | None = None  # max side the target image was thumbnailed to
    padding: int | None = None
    experiment: str | None = None
    iterations: int = 0  # training iterations done so far
    total_iterations: int | None = None
    final_loss: float | None = None
    source: str = "trained"  # "trained" or "distill" (imported from the article's weights)
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelInfo:
        """From a file's `info` JSON; fields this version does not know are left out."""
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass
class ModelFile:
    model: NCA
    info: ModelInfo
    target: torch.Tensor | None = None  # (4, H, W) premultiplied RGBA, as trained on
    optimizer_state: dict[str, torch.Tensor] | None = None  # flat tensors, for resuming


def _weights(model: NCA) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    return {
        "perceive_to_hidden.weight": sd["perceive_to_hidden.weight"][:, :, 0, 0],
        "perceive_to_hidden.bias": sd["perceive_to_hidden.bias"],
        "hidden_to_update.weight": sd["hidden_to_update.weight"][:, :, 0, 0],
        "hidden_to_update.bias": sd["hidden_to_update.bias"],
    }


def _digest(tensors: dict[str, torch.Tensor], info_json: str) -> str:
    """SHA-256 of the `info` JSON and every tensor: any edit to the weights or the metadata shows."""
    h = hashlib.sha256(info_json.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def to_bytes(mf: ModelFile) -> bytes:
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in _weights(mf.model).items()}
    if mf.target is not None:
        tensors["target"] = mf.target.detach().float().cpu().contiguous()
    for name, t in (mf.optimizer_state or {}).items():
        tensors[_OPTIMIZER_PREFIX + name] = t.detach().float().cpu().contiguous()
    info = asdict(mf.info)
    info.update(channels=mf.model.channels, hidden=mf.model.hidden, fire_rate=mf.model.fire_rate)
    info_json = json.dumps(info, sort_keys=True)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "info": info_json,
        "sha256": _digest(tensors, info_json),
    }
    return st_save(tensors, metadata=metadata)


def read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors JSON header's `__metadata__`, without reading the tensors."""
    if len(data) < 8:
        raise ModelFileError("not a model file: too short")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8 or header_len > 1_000_000:
        raise ModelFileError("not a model file: bad safetensors header")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError("not a model file: unreadable header") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"not a {FORMAT_NAME} model file (missing format metadata)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"unsupported model file version {meta.get('format_version')!r}")
    return meta


def from_bytes(data: bytes, map_location: str | torch.device = "cpu") -> ModelFile:
    if len(data) > MAX_MODEL_FILE_BYTES:
        raise ModelFileError("model file is too large")
    meta = read_metadata(data)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"model file is corrupt: {exc}") from exc
    if _digest(tensors, meta.get("info", "")) != meta.get("sha256"):
        raise ModelFileError("model file checksum mismatch: the file was corrupted or altered")
    try:
        info = ModelInfo.from_dict(json.loads(meta["info"]))
        channels, hidden = int(info.channels), int(info.hidden)
        # Checked before building the model: the header's sizes must not decide what we allocate.
        expected = {
            "perceive_to_hidden.weight": (hidden, PERCEPTION_FILTERS * channels),
            "perceive_to_hidden.bias": (hidden,),
            "hidden_to_update.weight": (channels, hidden),
            "hidden_to_update.bias": (channels,),
        }
        for name, shape in expected.items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                raise ModelFileError(f"tensor {name!r} missing or of the wrong shape (want {shape})")
        model = NCA(channels, hidden, float(info.fire_rate))
        # The file holds the 1x1 conv weights as plain matrices (out, in).
        model.load_state_dict({n: t if (t := tensors[n]).ndim == 1 else t[:, :, None, None] for n in expected})
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"model file metadata is invalid: {exc}") from exc
    except ValueError as exc:  # includes ModelFileError
        raise ModelFileError(str(exc)) from exc
    target = tensors.get("target")
    if target is not None and (target.ndim != 3 or target.shape[0] != 4):
        raise ModelFileError("tensor 'target' must have shape (4, H, W)")
    optimizer_state = {
        k[len(_OPTIMIZER_PREFIX):]: v for k, v in tensors.items() if k.startswith(_OPTIMIZER_PREFIX)
    } or None
    return ModelFile(model.to(map_location), info, target, optimizer_state)


def save(mf: ModelFile, path: str | Path) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then rename over `path`."""
    write_atomic(Path(path), to_bytes(mf))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> ModelFile:
    path = Path(path)
    if path.stat().st_size > MAX_MODEL_FILE_BYTES:
        raise ModelFileError(f"{path} is too large to be a model file")
    return from_bytes(path.read_bytes(), map_location)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
