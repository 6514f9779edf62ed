"""The model card: an automatic evaluation of one model, as JSON (docs/model-format.md#model-card).

`model_card(mf)` grows the model from the seed a few times (`evaluate.RUNS`, fixed seed) and
measures, each as a number and a small picture:

- growth: PSNR and alive fraction after the steps it was trained to grow in;
- persistence: the same at 1000 and 2000 steps (does it stay, fade or explode?);
- regrowth: a disc cut from the centre of the grown pattern, and its right quarter cut off; PSNR 200
  steps later;
- rotation: growth with the perception turned by 45 and 90 degrees, against the turned reference;
- the 8-bit Distill export: growth of the quantised model next to the float one.

Besides, a damage battery (`battery`): the ways people break a pattern on the page (five swipes of the
Watch view's eraser, half the pattern cut away, noise on the hidden channels), each with the PSNR after
regrowth and the steps it took, and persistence to 5,000 steps. It does not change the verdict (the
thresholds above were fitted without it); it says `survives` per damage.

It ends in one word, fitted to the experiment the model was trained for: `grows`, `persists`,
`regrows` or `fails`. The thresholds come from the article's 31 reference models, the shipped
examples and deliberately broken models (`scripts/card_evidence.py`; the figures are in
docs/model-format.md). A pure function of the model file: the API, the CLI and (later) the worker
call it. It takes 6 s (36 x 36) to 12 s (72 x 72) with one torch thread on the 2-core development
VM (docs/benchmarks.md); use one thread, two are slower for these small batches.
"""

from __future__ import annotations

import base64
import io
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from backend.nca import evaluate
from backend.nca.distill import quantization_report
from backend.nca.evaluate import THRESHOLDS, Reference, Thresholds, grow, grows_enough, pictures
from backend.nca.model import make_seed
from backend.nca.modelfile import ModelFile
from backend.nca.render import png_bytes

CARD_VERSION = 1
LONG_STEPS = (1000, 2000)  # persistence is measured this many steps after the seed
REGROW_STEPS = 200  # a cut is judged this many steps after it is made
ANGLES = (45.0, 90.0)
PICTURE_SIDE = 72  # pictures are upscaled (nearest neighbour) to at least this many pixels a side
VERDICTS = ("fails", "grows", "persists", "regrows")  # each one includes the ones before it
GOALS = {"growing": "grows", "persistent": "persists", "regenerating": "regrows"}  # the experiment's aim
# The damage battery: the Watch view's default eraser radius (frontend/index.html, 6 cells on the paper's 72-cell
# grid; scaled to the model's grid), five horizontal swipes across the grid at random rows of the pattern (fixed
# seed), then regrowth watched every BATTERY_EVERY steps up to BATTERY_MAX_STEPS: recovered once the pattern
# keeps THRESHOLDS.regrow_kept of its grown quality. Persistence: the uncut twin run on to PERSIST_STEPS.
PAGE_ERASER_RADIUS, PAPER_GRID_SIDE, SWIPES = 6.0, 72, 5
HIDDEN_NOISE = 0.25  # std of the noise on the hidden channels: half their spread in a grown pattern (~0.5)
BATTERY_EVERY, BATTERY_MAX_STEPS, PERSIST_STEPS = 25, 500, 5000


@dataclass
class Check:
    steps: int  # CA steps after the seed when measured
    psnr: float  # dB, of the runs' mean squared error against the reference
    alive: float  # fraction of the grid alive (alpha > 0.1), mean of the runs
    image: str  # PNG data URL of the first run
    passed: bool = False
    score: float | None = None  # what the threshold is applied to: growth gain (dB), kept or recovered share
    extra: dict[str, Any] = field(default_factory=dict)
    error: float = field(default=0.0, repr=False)  # mean squared error, for the scores (not in the card)


def _picture(x: torch.Tensor) -> str:
    """The first run's RGB on white as a PNG data URL, upscaled to at least PICTURE_SIDE pixels."""
    rgb = (pictures(x[:1])[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype("uint8")
    scale = max(1, math.ceil(PICTURE_SIDE / max(rgb.shape[:2])))
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb, scale)).decode("ascii")


def _check(x: torch.Tensor, ref_rgb: torch.Tensor, steps: int, **extra: Any) -> Check:
    error = evaluate.mse(pictures(x), ref_rgb).mean().item()
    return Check(steps, round(evaluate.psnr_of(error), 2), round(evaluate.alive_of(x), 4), _picture(x),
                 extra=dict(extra), error=error)


@dataclass
class Measurements:
    reference: Reference
    blank_error: float  # an empty grid's mean squared error against the reference
    growth_steps: int
    growth: evaluate.Growth
    checks: dict[str, Check]
    cut_errors: dict[str, tuple[float, float]]  # cut name -> (error just after the cut, uncut twin's error)


def measure(mf: ModelFile, runs: int = evaluate.RUNS, seed: int = evaluate.SEED) -> Measurements:
    """Every check's numbers and picture, not yet judged. About (2 growths + 2000 steps) x runs grid-steps,
    plus 200 steps for each cut and a growth for each angle."""
    model, height, width = mf.model, mf.info.grid_height, mf.info.grid_width
    steps = evaluate.growth_steps(mf)
    ref = evaluate.reference(mf, steps, runs, seed)
    generator = torch.Generator().manual_seed(seed)
    grown = evaluate.growth(model, mf, ref, steps, runs, generator)
    x = grown.x
    checks = {"growth": _check(x, ref.rgb, steps, early_steps=grown.early_steps,
                               alive_early=round(grown.alive_early, 4))}

    disc, column = evaluate.centre_cut(ref.box), evaluate.edge_cut_column(ref.box)
    cuts = {"cut_centre": {"disc": [round(v, 2) for v in disc]}, "cut_edge": {"from_column": column}}
    damaged = {"cut_centre": evaluate.erase(x, disc), "cut_edge": evaluate.cut_off_right(x, column)}
    batch = grow(model, torch.cat([x, *damaged.values()]), REGROW_STEPS, generator=generator)  # uncut twin first
    twin = evaluate.mse(pictures(batch[:runs]), ref.rgb).mean().item()
    cut_errors = {}
    for i, (name, where) in enumerate(cuts.items(), start=1):
        checks[name] = _check(batch[i * runs:(i + 1) * runs], ref.rgb, steps + REGROW_STEPS,
                              **where, cut_image=_picture(damaged[name]))
        cut_errors[name] = (evaluate.mse(pictures(damaged[name]), ref.rgb).mean().item(), twin)

    x, done = batch[:runs], steps + REGROW_STEPS
    for long_steps in LONG_STEPS:
        x = grow(model, x, max(long_steps - done, 0), generator=generator)
        done = max(long_steps, done)
        checks[f"steps_{long_steps}"] = _check(x, ref.rgb, done)

    seed_cell = (width // 2, height // 2)
    for angle in ANGLES:
        turned = grow(model, make_seed(height, width, model.channels, batch=runs), steps,
                      angle=math.radians(angle), generator=generator)
        checks[f"angle_{angle:g}"] = _check(turned, evaluate.rotate_picture(ref.rgb, angle, seed_cell), steps,
                                            degrees=angle)
    return Measurements(ref, evaluate.blank_mse(ref), steps, grown, checks, cut_errors)


def judge(m: Measurements, t: Thresholds = THRESHOLDS) -> dict[str, bool]:
    """Score and pass or fail each check; returns what the model does: {grows, persists, regrows}."""
    c, blank = m.checks, m.blank_error
    growth = c["growth"]
    growth.score = round(growth.psnr - evaluate.psnr_of(blank), 2)
    grows = growth.passed = grows_enough(m.growth, m.reference, t)
    for name in (f"steps_{s}" for s in LONG_STEPS):
        check = c[name]
        check.score = round(evaluate.kept(check.error, growth.error, blank), 3)
        check.passed = (grows and check.score >= t.persist_kept and check.alive >= t.min_alive
                        and check.alive <= growth.alive * t.persist_alive_ratio)
    for name, (cut_error, twin_error) in m.cut_errors.items():
        check = c[name]
        kept_cut, kept_twin = (evaluate.kept(e, growth.error, blank) for e in (cut_error, twin_error))
        regrown = evaluate.kept(check.error, growth.error, blank)
        check.extra.update(kept_after_cut=round(kept_cut, 3), kept_regrown=round(regrown, 3),
                           kept_uncut=round(kept_twin, 3))
        check.score = round(evaluate.recovered(regrown, kept_cut, kept_twin), 3)
        check.passed = grows and (check.score >= t.regrow_recovered or regrown >= t.regrow_kept)
    for angle in ANGLES:
        check = c[f"angle_{angle:g}"]
        check.score = round(evaluate.kept(check.error, growth.error, blank), 3)
        check.passed = grows and check.score >= t.rotate_kept
    persists = grows and all(c[f"steps_{s}"].passed for s in LONG_STEPS)
    regrows = persists and all(c[name].passed for name in m.cut_errors)
    return {"grows": grows, "persists": persists, "regrows": regrows}


def swiped(x: torch.Tensor, box: tuple[int, int, int, int], generator: torch.Generator) -> torch.Tensor:
    """A copy of the states with SWIPES horizontal eraser strokes across the grid, at random rows of the box."""
    out, (y0, y1, _, _) = x.clone(), box
    height, width = x.shape[-2:]
    radius = max(1.0, PAGE_ERASER_RADIUS * max(height, width) / PAPER_GRID_SIDE)
    rows = torch.arange(height, dtype=torch.float32)
    for centre in y0 + torch.rand(SWIPES, generator=generator) * (y1 - y0):
        out[..., (rows - centre).abs() <= radius, :] = 0.0
    return out


def battery(mf: ModelFile, m: Measurements, grows: bool, t: Thresholds = THRESHOLDS,
            seed: int = evaluate.SEED) -> dict[str, Any]:
    """The damage battery on the grown runs: per damage the PSNR once regrown (or at BATTERY_MAX_STEPS), the
    steps it took (None: not within them) and whether it survives; then persistence to PERSIST_STEPS."""
    model, x, ref = mf.model, m.growth.x, m.reference
    runs, generator = x.shape[0], torch.Generator().manual_seed(seed + 2)
    y0, y1, x0, x1 = ref.box
    noisy = x.clone()
    noisy[:, 4:] += torch.randn(noisy[:, 4:].shape, generator=generator) * HIDDEN_NOISE
    damaged = {"swipes": swiped(x, ref.box, generator), "half": evaluate.cut_off_right(x, (x0 + x1) // 2),
               "hidden_noise": noisy}
    kept = lambda states: evaluate.kept(evaluate.mse(pictures(states), ref.rgb).mean().item(),  # noqa: E731
                                        m.growth.error, m.blank_error)
    out: dict[str, Any] = {name: {"psnr_damaged": round(evaluate.psnr(pictures(d), ref.rgb), 2),
                                  "regrown_steps": None} for name, d in damaged.items()}
    batch, done = torch.cat([x, *damaged.values()]), 0
    while done < BATTERY_MAX_STEPS and any(r["regrown_steps"] is None for r in out.values()):
        batch, done = grow(model, batch, BATTERY_EVERY, generator=generator), done + BATTERY_EVERY
        for i, name in enumerate(damaged, start=1):
            states = batch[i * runs:(i + 1) * runs]
            if out[name]["regrown_steps"] is None and (kept(states) >= t.regrow_kept or done >= BATTERY_MAX_STEPS):
                out[name].update(psnr=round(evaluate.psnr(pictures(states), ref.rgb), 2),
                                 kept=round(kept(states), 3), at_steps=done)
                out[name]["regrown_steps"] = done if kept(states) >= t.regrow_kept else None
    for name in damaged:
        out[name].setdefault("psnr", out[name]["psnr_damaged"])
        out[name]["survives"] = grows and out[name]["regrown_steps"] is not None
    twin, steps = batch[:runs], m.growth_steps + done
    twin = grow(model, twin, max(PERSIST_STEPS - steps, 0), generator=generator)
    alive = evaluate.alive_of(twin)
    out[f"steps_{PERSIST_STEPS}"] = {
        "psnr": round(evaluate.psnr(pictures(twin), ref.rgb), 2), "kept": round(kept(twin), 3),
        "alive": round(alive, 4), "survives": grows and kept(twin) >= t.persist_kept and alive >= t.min_alive
        and alive <= m.growth.alive * t.persist_alive_ratio}
    return out


def verdict(does: dict[str, bool], experiment: str | None) -> str:
    """The highest level reached, up to the experiment's goal (a growing model is not asked to persist)."""
    goal = GOALS.get(experiment or "", "regrows")
    reached = "fails"
    for level in VERDICTS[1:VERDICTS.index(goal) + 1]:
        if not does[level]:
            break
        reached = level
    return reached


def _check_json(check: Check) -> dict[str, Any]:
    out = asdict(check)
    del out["error"]
    return out


def model_card(mf: ModelFile, model_sha256: str | None = None, quantization: bool = True,
               damage_battery: bool = True) -> dict[str, Any]:
    """The card as a JSON-ready dict. `model_sha256` (of the file's bytes) ties it to one model version."""
    started = time.perf_counter(), time.process_time()
    m = measure(mf)
    does = judge(m)
    start_from = mf.info.extra.get("start_from") if isinstance(mf.info.extra, dict) else None
    goal = GOALS.get(mf.info.experiment or "", "regrows")
    card: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "model": {"name": mf.info.name, "experiment": mf.info.experiment, "source": mf.info.source,
                  "iterations": mf.info.iterations, "grid": [mf.info.grid_height, mf.info.grid_width],
                  "sha256": model_sha256, "start_from": start_from},
        "verdict": verdict(does, mf.info.experiment),
        "goal": goal,
        "meets_goal": verdict(does, mf.info.experiment) == goal,
        "does": does,
        "reference": m.reference.kind,
        "blank_psnr": round(evaluate.psnr_of(m.blank_error), 2),
        "growth_steps": m.growth_steps,
        "runs": evaluate.RUNS,
        "seed": evaluate.SEED,
        "thresholds": asdict(THRESHOLDS),
        "checks": {name: _check_json(check) for name, check in m.checks.items()},
    }
    if damage_battery:
        card["battery"] = battery(mf, m, does["grows"])
    if quantization:
        card["quantization"] = quantization_report(mf, m.reference).as_dict()
    card["seconds"] = round(time.perf_counter() - started[0], 2)
    card["cpu_seconds"] = round(time.process_time() - started[1], 2)
    card["threads"] = torch.get_num_threads()
    return card


CHECK_LABELS = {
    "growth": "growth", "cut_centre": "centre cut", "cut_edge": "edge cut", "steps_1000": "long run",
    "steps_2000": "longer run", "angle_45": "turned 45°", "angle_90": "turned 90°",
}
BATTERY_LABELS = {"swipes": "five swipes", "half": "half cut away", "hidden_noise": "hidden noise",
                  f"steps_{PERSIST_STEPS}": f"{PERSIST_STEPS} steps"}
SCORE_LABELS = {"growth": "dB over empty", "cut_centre": "repaired", "cut_edge": "repaired"}


def summary(card: dict[str, Any]) -> str:
    """The card as a few lines of text (the CLI prints it)."""
    m = card["model"]
    lines = [f"{m['name'] or 'model'} ({m['experiment'] or 'no experiment recorded'}, {m['iterations']} iterations, "
             f"{m['grid'][1]}x{m['grid'][0]} grid): {card['verdict'].upper()} (trained to: {card['goal']})",
             f"  against the {'stored target' if card['reference'] == 'target' else 'model’s own grown picture'}; "
             f"an empty grid scores {card['blank_psnr']:.1f} dB"]
    for name, check in card["checks"].items():
        label, result = SCORE_LABELS.get(name, "kept"), "pass" if check["passed"] else "FAIL"
        lines.append(f"  {CHECK_LABELS[name]:<11} {check['steps']:>5} steps  {check['psnr']:5.1f} dB  "
                     f"alive {check['alive']:.3f}  {label} {check['score']:.2f}  {result}")
    for name, result in card.get("battery", {}).items():
        steps = f"regrown in {result['regrown_steps']} steps" if result.get("regrown_steps") else \
            f"kept {result['kept']:.2f}" if name.startswith("steps_") else "not regrown"
        lines.append(f"  {BATTERY_LABELS.get(name, name):<17} {result['psnr']:5.1f} dB  {steps}  "
                     f"{'survives' if result['survives'] else 'DOES NOT SURVIVE'}")
    if m.get("start_from"):
        lines.append(f"  started from {m['start_from']}")
    if "quantization" in card:
        q = card["quantization"]
        lines.append(f"  8-bit export: grown {q['psnr_8bit']:.1f} dB (float {q['psnr_float']:.1f} dB)"
                     + "".join(f"; warning: {w}" for w in q["warnings"]))
    lines.append(f"  computed in {card['seconds']:.1f} s ({card['cpu_seconds']:.1f} s CPU, {card['threads']} threads)")
    return "\n".join(lines)


def render_sheet(card: dict[str, Any], tile: int = 144) -> bytes:
    """Every picture of the card side by side with its numbers, as one PNG (for people; the API has JSON)."""
    from PIL import Image, ImageDraw

    def decode(url: str) -> Image.Image:
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
        return img.resize((tile, round(tile * img.height / img.width)), Image.NEAREST)

    tiles = []
    for name, check in card["checks"].items():
        pictures_ = [decode(check["extra"]["cut_image"])] if "cut_image" in check["extra"] else []
        tiles.append((name, check, [*pictures_, decode(check["image"])]))
    width = sum(len(p) * (tile + 4) + 8 for _, _, p in tiles) + 8
    height = tile + 110
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    m = card["model"]
    draw.text((8, 6), f"{m['name'] or 'model'} ({m['experiment'] or '?'}): {card['verdict']}  "
                      f"(goal {card['goal']}, reference {card['reference']}, empty grid {card['blank_psnr']:.1f} dB)",
              fill="black")
    x = 8
    for name, check, images in tiles:
        for img in images:
            sheet.paste(img, (x, 28))
            x += tile + 4
        left = x - len(images) * (tile + 4)
        colour = (0, 110, 0) if check["passed"] else (190, 0, 0)
        texts = [CHECK_LABELS[name], f"{check['steps']} steps", f"{check['psnr']:.1f} dB, alive {check['alive']:.2f}",
                 f"{SCORE_LABELS.get(name, 'kept')} {check['score']:.2f}", "pass" if check["passed"] else "FAIL"]
        for i, text in enumerate(texts):
            draw.text((left, 34 + tile + 14 * i), text, fill=colour if i == len(texts) - 1 else "black")
        x += 8
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
