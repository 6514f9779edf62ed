"""The Distill article's WebGL model format: import its pretrained models, export ours to it.

Format (../shared/reference/README.md, docs/model-format.md): a JSON list of the update network's
two 1x1 layers, each 8-bit quantised with a weight and a bias scale, the first layer's inputs in
band-major order. Export quantises as the authors' notebook did (`pack_layer`: scale = 2 max|w|,
q = round((w / scale + 0.5) * 255)), so importing an export gives the quantised weights exactly,
and exporting an imported reference model gives back its bytes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import evaluate
from .model import CHANNELS, FIRE_RATE, HIDDEN, NCA, PAPER_GRID, PERCEPTION_FILTERS
from .modelfile import ModelFile, ModelInfo

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


def _model_from_layers(layers: list, fire_rate: float = FIRE_RATE) -> NCA:
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
    model = NCA(channels, hidden, fire_rate)
    with torch.no_grad():
        model.perceive_to_hidden.weight.copy_(torch.from_numpy(channel_major.T.copy())[:, :, None, None])
        model.perceive_to_hidden.bias.copy_(torch.from_numpy(b1))
        model.hidden_to_update.weight.copy_(torch.from_numpy(w2.T.copy())[:, :, None, None])
        model.hidden_to_update.bias.copy_(torch.from_numpy(b2))
    return model


def from_distill_json(layers: list, name: str | None = None, experiment: str | None = None) -> ModelFile:
    model = _model_from_layers(layers)
    channels, hidden = model.channels, model.hidden
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


# --- Export -------------------------------------------------------------------------------------


def _quantize(weight: np.ndarray, bias: np.ndarray) -> dict[str, Any]:
    """W[in][out] and b[out] -> one layer object: (in + 1) x out bytes, row-major, base64.

    An all-zero matrix gets scale 0 (dequantises to exact zeros whatever the byte).
    """
    def scale_of(a: np.ndarray) -> float:
        return float(np.float32(2.0) * np.abs(a).max()) if a.size else 0.0

    weight_scale, bias_scale = scale_of(weight), scale_of(bias)

    def bytes_of(a: np.ndarray, scale: float) -> np.ndarray:
        if scale == 0.0:
            return np.full(a.shape, 128, dtype=np.uint8)
        return np.clip(np.round((a / np.float32(scale) + 0.5) * 255.0), 0, 255).astype(np.uint8)

    packed = np.vstack([bytes_of(weight, weight_scale), bytes_of(bias, bias_scale)[None]])
    in_ch, out_ch = weight.shape
    return {"data_b64": base64.b64encode(packed.tobytes()).decode("ascii"), "in_ch": int(in_ch),
            "out_ch": int(out_ch), "weight_scale": weight_scale, "bias_scale": bias_scale, "type": "uint8"}


def to_distill_json(model: NCA) -> list[dict[str, Any]]:
    """The model's two layers in the demo's format (first layer's inputs reordered to band-major)."""
    with torch.no_grad():
        w1 = model.perceive_to_hidden.weight[:, :, 0, 0].detach().float().cpu().numpy().T  # (3C, hidden), c*3+k
        b1 = model.perceive_to_hidden.bias.detach().float().cpu().numpy()
        w2 = model.hidden_to_update.weight[:, :, 0, 0].detach().float().cpu().numpy().T  # (hidden, C)
        b2 = model.hidden_to_update.bias.detach().float().cpu().numpy()
    channels, hidden = model.channels, model.hidden
    band_major = w1.reshape(channels, PERCEPTION_FILTERS, hidden).transpose(1, 0, 2).reshape(-1, hidden)
    return [_quantize(band_major, b1), _quantize(w2, b2)]


def quantized(mf: ModelFile) -> ModelFile:
    """The model as the 8-bit export holds it (import of the export), same info and target."""
    model = _model_from_layers(to_distill_json(mf.model), mf.model.fire_rate)
    return replace(mf, model=model, optimizer_state=None)


@dataclass
class QuantizationReport:
    """What 8-bit quantisation does to a model: its growth before and after, side by side."""

    steps: int  # growth steps measured (the model's training max_steps)
    reference: str  # "target" or "self" (evaluate.py)
    psnr_float: float  # dB, mean of evaluate.RUNS runs from the seed, same fire masks for both
    psnr_8bit: float
    alive_float: float
    alive_8bit: float
    grows_float: bool
    grows_8bit: bool
    max_weight_error: float  # largest |w - w_8bit| over both layers
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantization_report(mf: ModelFile, ref: evaluate.Reference | None = None) -> QuantizationReport:
    """Grow the float and the 8-bit model from the seed with the same random fire masks and compare.

    `ref`: the reference picture if the caller has it already (the card does).
    """
    steps = evaluate.growth_steps(mf)
    ref = ref or evaluate.reference(mf, steps)
    q = quantized(mf)
    results = []
    for model in (mf.model, q.model):
        g = evaluate.growth(model, mf, ref, steps, generator=torch.Generator().manual_seed(evaluate.SEED))
        results.append((round(evaluate.psnr_of(g.error), 2), round(g.alive, 4), evaluate.grows_enough(g, ref)))
    error = max((a - b).abs().max().item() for a, b in zip(mf.model.parameters(), q.model.parameters(), strict=True))
    (psnr_f, alive_f, grows_f), (psnr_q, alive_q, grows_q) = results
    warnings = []
    if grows_f and not grows_q:
        warnings.append(f"the 8-bit model no longer grows ({psnr_q:.1f} dB against {psnr_f:.1f} dB for the float "
                        "model): the Distill demo will not show this pattern")
    elif psnr_f - psnr_q > 3.0:
        warnings.append(f"8-bit quantisation costs {psnr_f - psnr_q:.1f} dB of grown PSNR")
    if (mf.model.channels, mf.model.hidden) != (CHANNELS, HIDDEN):
        warnings.append(f"the Distill demo expects {CHANNELS} channels and {HIDDEN} hidden units, this model has "
                        f"{mf.model.channels} and {mf.model.hidden}")
    if mf.model.fire_rate != FIRE_RATE:
        warnings.append(f"the Distill demo updates with fire rate {FIRE_RATE}, this model was trained with "
                        f"{mf.model.fire_rate}")
    return QuantizationReport(steps, ref.kind, psnr_f, psnr_q, alive_f, alive_q, grows_f, grows_q,
                              round(error, 6), warnings)


def export_distill(mf: ModelFile) -> tuple[list[dict[str, Any]], QuantizationReport]:
    """The demo's JSON (a list of two layers) and what quantisation does to this model."""
    return to_distill_json(mf.model), quantization_report(mf)
