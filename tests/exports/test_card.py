"""The model card: verdicts on known good and broken models, the measurements behind them, stored cards."""

import hashlib
import json
import math

import pytest
import torch

from backend.exports.card import model_card, render_sheet, summary, verdict
from backend.nca import evaluate, modelfile
from backend.nca.distill import import_distill
from backend.nca.fast import grow
from backend.nca.model import NCA, make_seed
from backend.nca.modelfile import ModelFile, ModelInfo
from tests.conftest import DISTILL_MODELS, REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHECKS = {"growth", "cut_centre", "cut_edge", "steps_1000", "steps_2000", "angle_45", "angle_90"}


def random_model(seed: int = 0, scale: float = 0.1) -> ModelFile:
    """Random weights in both layers (a fresh model's last layer is zero): broken on purpose."""
    torch.manual_seed(seed)
    model = NCA()
    with torch.no_grad():
        model.hidden_to_update.weight.normal_(0.0, scale)
        model.hidden_to_update.bias.normal_(0.0, scale)
    return ModelFile(model, ModelInfo(grid_height=24, grid_width=24, name="random", experiment="regenerating"))


@pytest.mark.skipif(not DISTILL_MODELS.is_dir(), reason=f"{DISTILL_MODELS} is absent (the article's models)")
def test_a_regenerating_reference_model_regrows():
    card = model_card(import_distill(DISTILL_MODELS / "regenerating_lizard.json"))
    assert card["verdict"] == "regrows" and card["goal"] == "regrows", summary(card)
    assert card["reference"] == "self"  # the Distill files hold no target
    assert all(card["checks"][name]["passed"] for name in CHECKS), summary(card)
    assert card["quantization"]["max_weight_error"] == 0.0  # already 8-bit
    json.dumps(card, allow_nan=False)


@pytest.mark.skipif(not DISTILL_MODELS.is_dir(), reason=f"{DISTILL_MODELS} is absent (the article's models)")
def test_a_growing_reference_model_grows_but_does_not_persist():
    card = model_card(import_distill(DISTILL_MODELS / "growing_lizard.json"), quantization=False)
    assert card["verdict"] == "grows" and card["goal"] == "grows", summary(card)
    assert card["does"] == {"grows": True, "persists": False, "regrows": False}


@pytest.mark.parametrize("mf", [random_model(0, 0.02), random_model(1, 0.1),
                                ModelFile(NCA(), ModelInfo(grid_height=24, grid_width=24, name="untrained"))],
                         ids=["random-0-0.02", "random-1-0.1", "untrained"])
def test_broken_models_fail(mf):
    card = model_card(mf, quantization=False)
    assert card["verdict"] == "fails", summary(card)
    assert not card["checks"]["growth"]["passed"]
    json.dumps(card, allow_nan=False)  # an exploded state still gives finite numbers


def test_the_shipped_examples_cards_are_stored_next_to_them_and_current():
    """scripts/make_examples.py writes models/<stem>.card.json; its sha256 ties it to the model file."""
    for path in sorted((REPO_ROOT / "models").glob("*.safetensors")):
        card = json.loads(path.with_suffix(".card.json").read_text())
        assert card["model"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), \
            f"{path.name} changed: run scripts/make_examples.py --cards"
        assert set(card["checks"]) == CHECKS and card["verdict"] in ("grows", "persists", "regrows")
        for check in card["checks"].values():
            assert check["image"].startswith("data:image/png;base64,")


def test_the_card_of_a_shipped_example_measures_what_it_says():
    mf = modelfile.load(REPO_ROOT / "models" / "heart.safetensors")
    card = model_card(mf, model_sha256="abc")
    assert card["model"]["sha256"] == "abc" and card["growth_steps"] == 48 and card["reference"] == "target"
    growth = card["checks"]["growth"]
    # The growth PSNR is that of RGB on white against the target's RGB on white, 4 runs, seed 0.
    x = grow(mf.model, make_seed(36, 36, batch=4), 48, generator=torch.Generator().manual_seed(0))
    want = evaluate.psnr(evaluate.pictures(x), evaluate.pictures(mf.target[None])[0])
    assert growth["psnr"] == pytest.approx(want, abs=0.01)
    assert growth["score"] == pytest.approx(growth["psnr"] - card["blank_psnr"], abs=0.02)
    assert card["checks"]["steps_2000"]["steps"] == 2000 and card["checks"]["cut_centre"]["steps"] == 248
    assert card["verdict"] in ("persists", "regrows") and card["quantization"]["grows_8bit"]
    sheet = render_sheet(card)
    assert sheet.startswith(b"\x89PNG")


def test_rotated_growth_is_compared_with_the_target_turned_the_same_way():
    mf = modelfile.load(REPO_ROOT / "models" / "heart.safetensors")
    x = grow(mf.model, make_seed(36, 36, batch=2), 48, angle=math.radians(90),
                      generator=torch.Generator().manual_seed(0))
    target = evaluate.pictures(mf.target[None])[0]
    same = evaluate.psnr(evaluate.pictures(x), evaluate.rotate_picture(target, 90, (18, 18)))
    other = evaluate.psnr(evaluate.pictures(x), evaluate.rotate_picture(target, -90, (18, 18)))
    assert same > other + 5.0
    # A turn by 90 degrees about a cell moves cells onto cells: the picture is exactly permuted.
    turned = evaluate.rotate_picture(target, 90, (18, 18))
    assert torch.allclose(evaluate.rotate_picture(turned, -90, (18, 18))[:, 1:, 1:], target[:, 1:, 1:], atol=1e-5)


def test_the_verdict_is_the_highest_level_reached_up_to_the_experiments_goal():
    does = {"grows": True, "persists": True, "regrows": True}
    assert [verdict(does, e) for e in ("growing", "persistent", "regenerating", None)] == \
        ["grows", "persists", "regrows", "regrows"]
    assert verdict({"grows": True, "persists": False, "regrows": False}, "regenerating") == "grows"
    assert verdict({"grows": False, "persists": False, "regrows": False}, "growing") == "fails"


def test_persistence_and_regrowth_scores():
    # kept: 1 as good as grown, 0 as bad as an empty grid; recovered: share of a cut's damage repaired.
    assert evaluate.kept(0.01, 0.01, 0.1) == pytest.approx(1.0)
    assert evaluate.kept(0.1, 0.01, 0.1) == pytest.approx(0.0)
    assert evaluate.kept(0.2, 0.01, 0.1) < 0
    assert evaluate.recovered(1.0, 0.5, 1.0) == pytest.approx(1.0)
    assert evaluate.recovered(0.5, 0.5, 1.0) == pytest.approx(0.0)
    # A cut that did no harm counts as MIN_HARM of harm: noise cannot decide the ratio.
    assert evaluate.recovered(0.9, 0.9, 0.9) == pytest.approx(1.0)
    assert evaluate.recovered(0.9 - evaluate.MIN_HARM, 0.9, 0.9) == pytest.approx(0.0)
    assert evaluate.recovered(-5.0, 0.9, 0.91) == -1.0


def test_the_damage_battery_on_a_shipped_model_and_on_random_weights():
    """Swipes, half cut away, hidden noise and 5,000 steps: the shipped heart, continued with damage=strokes
    (scripts/make_examples.py --continue-with strokes), survives five swipes, losing half of itself and noise;
    the mushroom (the article's circles) holds for 5,000 steps; random weights survive nothing."""
    card = model_card(modelfile.load(REPO_ROOT / "models" / "heart.safetensors"), quantization=False)
    battery = card["battery"]
    assert set(battery) == {"swipes", "half", "hidden_noise", "steps_5000"}
    for name in ("swipes", "half", "hidden_noise"):
        assert battery[name]["survives"] and 0 < battery[name]["regrown_steps"] <= 500
        assert battery[name]["psnr"] > card["checks"]["growth"]["psnr"] - 10
        assert battery[name]["kept"] >= evaluate.THRESHOLDS.regrow_kept
    assert battery["swipes"]["psnr_damaged"] < card["checks"]["growth"]["psnr"] - 5  # the swipes hurt
    assert card["model"]["start_from"] == "example-heart"  # the lineage: it went on from the shipped heart
    text = summary(card)
    assert "five swipes" in text and "half cut away" in text and "5000 steps" in text
    assert "started from example-heart" in text
    held = model_card(modelfile.load(REPO_ROOT / "models" / "mushroom.safetensors"), quantization=False)
    assert held["battery"]["steps_5000"]["survives"] and held["model"]["start_from"] is None

    bad = model_card(random_model(), quantization=False)
    assert bad["verdict"] == "fails"
    assert not any(result["survives"] for result in bad["battery"].values())
    assert "DOES NOT SURVIVE" in summary(bad)
