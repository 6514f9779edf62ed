"""Export to the Distill demo's 8-bit format: exact round trip, the reference bytes, the quantisation report."""

import base64
import json

import numpy as np
import pytest
import torch

from backend.nca import evaluate, modelfile
from backend.nca.distill import (
    export_distill,
    from_distill_json,
    import_distill,
    quantization_report,
    quantized,
    to_distill_json,
)
from backend.nca.model import NCA
from tests.conftest import DISTILL_MODELS, REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEART = REPO_ROOT / "models" / "heart.safetensors"


def weights(model: NCA) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_export_then_import_gives_the_quantised_weights_exactly():
    mf = modelfile.load(HEART)
    layers = to_distill_json(mf.model)
    assert [(layer["in_ch"], layer["out_ch"], layer["type"]) for layer in layers] == [(48, 128, "uint8"),
                                                                                     (128, 16, "uint8")]
    imported = from_distill_json(json.loads(json.dumps(layers)))  # through JSON text, as a file would be
    for got, want in zip(weights(imported.model), weights(quantized(mf).model), strict=True):
        assert torch.equal(got, want)
    # The 8-bit weights are within half a quantisation step of the float ones, and exporting them again
    # changes nothing.
    for got, want, layer in zip(weights(imported.model)[::2], weights(mf.model)[::2], layers, strict=True):
        assert (got - want).abs().max() <= layer["weight_scale"] / 255 / 2 * 1.001
    assert to_distill_json(imported.model) == layers


def test_first_layer_is_band_major():
    """Input k*C + c of the export is filter k on channel c: identity on channel 3 (alpha) is input 3."""
    model = NCA()
    with torch.no_grad():
        model.perceive_to_hidden.weight.zero_()
        model.perceive_to_hidden.weight[0, 3 * 3 + 0] = 1.0  # channel-major: channel 3, filter 0 (identity)
        model.perceive_to_hidden.weight[1, 5 * 3 + 2] = -1.0  # channel 5, filter 2 (Sobel-y)
    layer = to_distill_json(model)[0]
    q = np.frombuffer(base64.b64decode(layer["data_b64"]), np.uint8).reshape(49, 128)[:48]
    assert q[3, 0] == 255 and q[2 * 16 + 5, 1] == 0  # band-major rows 3 and 37
    assert (np.delete(q[:, :2], [3, 37], axis=0) == 128).all()


def test_an_all_zero_layer_exports_as_exact_zeros():
    layers = to_distill_json(NCA())  # a fresh model: its last layer (and bias) start at zero
    assert layers[1]["weight_scale"] == 0.0 and layers[1]["bias_scale"] == 0.0
    model = from_distill_json(layers).model
    assert not model.hidden_to_update.weight.any() and not model.hidden_to_update.bias.any()


@pytest.mark.skipif(not DISTILL_MODELS.is_dir(), reason=f"{DISTILL_MODELS} is absent (the article's models)")
def test_exporting_an_imported_reference_model_gives_back_its_bytes():
    for name in ("regenerating_lizard", "growing_eye", "persistent_pretzel"):
        original = json.loads((DISTILL_MODELS / f"{name}.json").read_text())
        exported = to_distill_json(import_distill(DISTILL_MODELS / f"{name}.json").model)
        for got, want in zip(exported, original, strict=True):
            assert got["data_b64"] == want["data_b64"], name
            assert got["weight_scale"] == pytest.approx(want["weight_scale"], rel=1e-6)
            assert got["bias_scale"] == pytest.approx(want["bias_scale"], rel=1e-6)


def test_the_report_compares_float_and_8bit_growth_of_a_shipped_model():
    layers, report = export_distill(modelfile.load(HEART))
    assert report.reference == "target" and report.steps == 48
    assert report.grows_float and report.grows_8bit and report.warnings == []
    assert abs(report.psnr_float - report.psnr_8bit) < 1.0  # the example survives quantisation
    assert 0 < report.max_weight_error < 0.01
    assert json.loads(json.dumps(report.as_dict()))["psnr_8bit"] == report.psnr_8bit


def test_the_report_warns_when_the_8bit_model_no_longer_grows():
    """A hidden unit that never fires (bias -1000) with huge outgoing weights changes nothing in float,
    but it sets both layers' scales, so every other 8-bit weight is rounded away."""
    mf = modelfile.load(HEART)
    with torch.no_grad():
        mf.model.perceive_to_hidden.bias[0] = -1000.0
        mf.model.perceive_to_hidden.weight[0] = 0.0
        mf.model.hidden_to_update.weight[:, 0] = 50.0
    report = quantization_report(mf)
    assert report.grows_float and not report.grows_8bit
    assert any("no longer grows" in w for w in report.warnings), report.warnings


def test_a_shipped_model_exported_from_the_cli_still_grows(tmp_path):
    from backend.nca.cli import main

    out, report_path = tmp_path / "regenerating_heart.json", tmp_path / "report.json"
    assert main(["export-distill", str(HEART), "--out", str(out), "--report", str(report_path)]) == 0
    assert json.loads(report_path.read_text())["grows_8bit"] is True
    imported = import_distill(out)  # the demo's file name gives the experiment and the name back
    assert (imported.info.experiment, imported.info.name) == ("regenerating", "heart")
    shipped = modelfile.load(HEART)  # its target and training steps, with the 8-bit weights
    steps = evaluate.growth_steps(shipped)
    ref = evaluate.reference(shipped, steps)
    grown = evaluate.growth(imported.model, shipped, ref, steps, generator=torch.Generator().manual_seed(1))
    assert evaluate.grows_enough(grown, ref)
    assert evaluate.psnr_of(grown.error) > 20.0
