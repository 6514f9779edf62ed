"""Import the Distill article's pretrained WebGL models (format: ../shared/reference/README.md)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import torch

from .model import NCA, PERCEPTION_FILTERS
from .modelfile import ModelFile, ModelInfo
from .target import PAPER_GRID

DISTILL_GRID = PAPER_GRID  # the article's demo plays on the paper's grid


class DistillFormatError(ValueError):
    pass


def _dequantize(layer: dict) -> tuple[np.ndarray, np.ndarray]:
    """One layer -> (W[in][out], b[out]) as float32."""
    try:
        in_ch, out_ch = int(layer["in_ch"]), int(layer["out_ch"])
        raw = np.frombuffer(base64.b64decode(layer["data_b64"]), dtype=np.uint8)
        weight_scale, bias_scale = float(layer["weight_scale"]), float(layer["bias_scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DistillFormatError(f"malformed layer: {exc}") from exc
    if raw.size != (in_ch + 1) * out_ch:
        raise DistillFormatError(f"layer data has {raw.size} bytes, expected {(in_ch + 1) * out_ch}")
    q = raw.reshape(in_ch + 1, out_ch).astype(np.float32) / 255.0 - 0.5
    return q[:in_ch] * weight_scale, q[in_ch] * bias_scale


def from_distill_json(layers: list, name: str | None = None, experiment: str | None = None) -> ModelFile:
    if not isinstance(layers, list) or len(layers) != 2:
        raise DistillFormatError("expected a JSON list of two layer objects")
    w1, b1 = _dequantize(layers[0])
    w2, b2 = _dequantize(layers[1])
    channels, hidden = w2.shape[1], w2.shape[0]
    if w1.shape != (PERCEPTION_FILTERS * channels, hidden):
        expected = (PERCEPTION_FILTERS * channels, hidden)
        raise DistillFormatError(f"first layer has shape {w1.shape}, expected {expected}")
    # The demo's inputs are band-major (k * C + c); ours are channel-major (c * 3 + k).
    channel_major = w1.reshape(PERCEPTION_FILTERS, channels, hidden).transpose(1, 0, 2).reshape(-1, hidden)
    model = NCA(channels, hidden)
    with torch.no_grad():
        model.perceive_to_hidden.weight.copy_(torch.from_numpy(channel_major.T.copy())[:, :, None, None])
        model.perceive_to_hidden.bias.copy_(torch.from_numpy(b1))
        model.hidden_to_update.weight.copy_(torch.from_numpy(w2.T.copy())[:, :, None, None])
        model.hidden_to_update.bias.copy_(torch.from_numpy(b2))
    info = ModelInfo(channels=channels, hidden=hidden, grid_height=DISTILL_GRID, grid_width=DISTILL_GRID,
                     experiment=experiment, source="distill", name=name)
    return ModelFile(model, info)


def import_distill(path: str | Path) -> ModelFile:
    """Read `<experiment>_<target>.json` into a model file that plays on a 72x72 grid."""
    path = Path(path)
    try:
        layers = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DistillFormatError(f"{path} is not JSON: {exc}") from exc
    experiment, _, target = path.stem.partition("_")
    known = experiment in ("growing", "persistent", "regenerating")
    return from_distill_json(layers, name=target if known else path.stem, experiment=experiment if known else None)
