"""Draw the example targets and train the example models in models/ with our own trainer.

    .venv/bin/python scripts/make_examples.py                 # draw + train every example
    .venv/bin/python scripts/make_examples.py --only heart    # one of them
    .venv/bin/python scripts/make_examples.py --draw-only     # just the target PNGs
    .venv/bin/python scripts/make_examples.py --evaluate      # how well the shipped models grow
    .venv/bin/python scripts/make_examples.py --cards         # only (re)write the model cards

The pictures are drawn here with Pillow primitives (no third-party artwork, nothing to license).
Each example is trained with the `regenerating` experiment (pool + damage) on the `preview`
recipe's small grid (24-cell target, 36x36 grid) with a 5-minute time budget (the budget recipe,
backend/nca/budget.py), one torch thread per model, two in parallel on the 2-core development VM.
A time budget plans from the speed it measures, so a rerun trains a different number of
iterations and gives an equivalent model, not bit-identical weights (docs/benchmarks.md,
"Example models"); each shipped model passes its own card (it regrows).
Writes models/<name>.png (the drawn target), models/<name>.safetensors, its model card
models/<name>.card.json (backend/exports/card.py; the API serves it), and a loss log (iteration,
seconds, loss) to artifacts/examples/<name>.csv.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.exports.card import model_card, summary  # noqa: E402
from backend.nca import modelfile  # noqa: E402
from backend.nca.fast import grow  # noqa: E402
from backend.nca.jobspec import JobSpec  # noqa: E402
from backend.nca.model import erase_circle, make_seed, to_rgb, to_rgba  # noqa: E402
from backend.nca.target import load_target  # noqa: E402
from backend.nca.train import PRESETS  # noqa: E402

CANVAS = 512  # drawn large, saved at PNG_SIZE (Lanczos) so edges are anti-aliased
PNG_SIZE = 128
PREVIEW = PRESETS["preview"]
TARGET_SIZE, PADDING = int(PREVIEW["target_size"]), int(PREVIEW["padding"])  # the example grid is 36x36 cells
# The preview recipe's grid and steps, regenerating, with a time budget (backend.nca.budget: the budget
# recipe and its plan). heart.safetensors is older: 2000 iterations of the preview recipe, lr drop at 1400.
RECIPE = {"target_size": TARGET_SIZE, "padding": PADDING, "min_steps": 32, "max_steps": 48,
          "experiment": "regenerating", "minutes": 5.0, "iterations": 20_000, "checkpoint_every": 250}


def _scaled(box: tuple[float, ...]) -> list[float]:
    return [v * CANVAS for v in box]


def draw_smiley(d: ImageDraw.ImageDraw) -> None:
    """A yellow face with a dark rim, two eyes and a wide smile."""
    d.ellipse(_scaled((0.02, 0.02, 0.98, 0.98)), fill=(60, 40, 20, 255))
    d.ellipse(_scaled((0.08, 0.08, 0.92, 0.92)), fill=(255, 200, 20, 255))
    for cx in (0.34, 0.66):
        d.ellipse(_scaled((cx - 0.08, 0.22, cx + 0.08, 0.46)), fill=(60, 40, 20, 255))
    d.chord(_scaled((0.2, 0.3, 0.8, 0.82)), 10, 170, fill=(60, 40, 20, 255))
    d.chord(_scaled((0.3, 0.42, 0.7, 0.72)), 10, 170, fill=(255, 200, 20, 255))


def draw_heart(d: ImageDraw.ImageDraw) -> None:
    """A red heart with a darker rim and a white highlight."""
    def heart(inset: float, colour: tuple[int, int, int, int]) -> None:
        r = 0.26 - inset
        for cx in (0.28, 0.72):
            d.ellipse(_scaled((cx - r, 0.32 - r, cx + r, 0.32 + r)), fill=colour)
        d.polygon(_scaled((0.03 + inset * 1.4, 0.42, 0.97 - inset * 1.4, 0.42, 0.5, 0.95 - inset * 1.6)), fill=colour)
        d.rectangle(_scaled((0.28, 0.2, 0.72, 0.45)), fill=colour)

    heart(0.0, (120, 0, 20, 255))
    heart(0.06, (230, 30, 50, 255))
    d.ellipse(_scaled((0.17, 0.2, 0.33, 0.36)), fill=(255, 235, 240, 255))


def draw_apple(d: ImageDraw.ImageDraw) -> None:
    """A red apple with a darker rim, a brown stem, a green leaf and a highlight."""
    for inset, colour in ((0.0, (120, 10, 20, 255)), (0.04, (215, 35, 40, 255))):
        for cx in (0.36, 0.64):
            d.ellipse(_scaled((cx - 0.3 + inset, 0.22 + inset, cx + 0.3 - inset, 0.94 - inset)), fill=colour)
    d.rectangle(_scaled((0.47, 0.06, 0.53, 0.3)), fill=(100, 60, 20, 255))
    d.ellipse(_scaled((0.54, 0.06, 0.84, 0.2)), fill=(60, 150, 40, 255))
    d.ellipse(_scaled((0.2, 0.34, 0.32, 0.52)), fill=(255, 200, 200, 255))


def draw_ladybug(d: ImageDraw.ImageDraw) -> None:
    """A red ladybug from above: black head, a line between the wings and six black spots."""
    d.ellipse(_scaled((0.3, 0.02, 0.7, 0.36)), fill=(25, 25, 25, 255))
    d.ellipse(_scaled((0.08, 0.16, 0.92, 0.98)), fill=(25, 25, 25, 255))
    d.ellipse(_scaled((0.12, 0.2, 0.88, 0.94)), fill=(220, 30, 30, 255))
    d.rectangle(_scaled((0.485, 0.2, 0.515, 0.94)), fill=(25, 25, 25, 255))
    for cx, cy in ((0.3, 0.4), (0.7, 0.4), (0.24, 0.62), (0.76, 0.62), (0.36, 0.8), (0.64, 0.8)):
        d.ellipse(_scaled((cx - 0.07, cy - 0.07, cx + 0.07, cy + 0.07)), fill=(25, 25, 25, 255))
    for cx in (0.4, 0.6):
        d.ellipse(_scaled((cx - 0.035, 0.1, cx + 0.035, 0.17)), fill=(255, 255, 255, 255))


def draw_beachball(d: ImageDraw.ImageDraw) -> None:
    """A beach ball: red, white and blue segments around a yellow cap, with a dark rim."""
    d.ellipse(_scaled((0.02, 0.02, 0.98, 0.98)), fill=(30, 40, 90, 255))
    box = _scaled((0.06, 0.06, 0.94, 0.94))
    for i, colour in enumerate([(225, 40, 40, 255), (250, 250, 250, 255), (40, 90, 220, 255)] * 2):
        d.pieslice(box, i * 60 - 90, i * 60 - 30, fill=colour)
    d.ellipse(_scaled((0.4, 0.4, 0.6, 0.6)), fill=(255, 210, 40, 255))


def draw_mushroom(d: ImageDraw.ImageDraw) -> None:
    """A red toadstool with white spots on a beige stem."""
    d.rectangle(_scaled((0.36, 0.45, 0.64, 0.96)), fill=(235, 215, 180, 255))
    d.pieslice(_scaled((0.02, 0.04, 0.98, 0.9)), 180, 360, fill=(200, 20, 30, 255))
    for box in ((0.2, 0.2, 0.32, 0.32), (0.44, 0.1, 0.58, 0.24), (0.68, 0.22, 0.8, 0.34), (0.4, 0.32, 0.5, 0.42)):
        d.ellipse(_scaled(box), fill=(255, 255, 255, 255))


def draw_flower(d: ImageDraw.ImageDraw) -> None:
    """Six pink petals around a yellow and orange centre."""
    for i in range(6):
        angle = i * math.pi / 3
        cx, cy = 0.5 + 0.28 * math.cos(angle), 0.5 + 0.28 * math.sin(angle)
        d.ellipse(_scaled((cx - 0.2, cy - 0.2, cx + 0.2, cy + 0.2)), fill=(235, 90, 160, 255))
    d.ellipse(_scaled((0.32, 0.32, 0.68, 0.68)), fill=(240, 140, 20, 255))
    d.ellipse(_scaled((0.39, 0.39, 0.61, 0.61)), fill=(255, 220, 50, 255))


def draw_leaf(d: ImageDraw.ImageDraw) -> None:
    """A green leaf on a slant (a lens between its two tips), a light midrib and veins."""
    tip, end = (0.12, 0.88), (0.9, 0.1)
    normal = (0.7071, 0.7071)  # across the leaf
    edge = []
    for side in (1, -1):
        for i in range(25):
            t = i / 24 if side == 1 else 1 - i / 24
            width = 0.2 * math.sin(math.pi * t) * side
            x, y = tip[0] + (end[0] - tip[0]) * t, tip[1] + (end[1] - tip[1]) * t
            edge += [x + normal[0] * width, y + normal[1] * width]
    d.polygon(_scaled(tuple(edge)), fill=(40, 140, 50, 255))
    d.line(_scaled((0.04, 0.96, *end)), fill=(170, 230, 120, 255), width=int(0.03 * CANVAS))
    for t in (0.3, 0.5, 0.7):
        x, y = tip[0] + (end[0] - tip[0]) * t, tip[1] + (end[1] - tip[1]) * t
        d.line(_scaled((x, y, x + 0.02, y - 0.16)), fill=(170, 230, 120, 255), width=int(0.018 * CANVAS))
        d.line(_scaled((x, y, x + 0.16, y - 0.02)), fill=(170, 230, 120, 255), width=int(0.018 * CANVAS))


def draw_pebble(d: ImageDraw.ImageDraw) -> None:
    """The starter's drawing: a round pebble with a dark rim, three coloured bands and two light spots (generic
    parts: a rim, fills, spots; no gallery subject)."""
    d.ellipse(_scaled((0.04, 0.06, 0.96, 0.94)), fill=(50, 60, 90, 255))
    d.ellipse(_scaled((0.09, 0.11, 0.91, 0.89)), fill=(40, 150, 170, 255))
    d.chord(_scaled((0.09, 0.11, 0.91, 0.89)), 200, 340, fill=(240, 170, 40, 255))
    d.chord(_scaled((0.09, 0.11, 0.91, 0.89)), 20, 160, fill=(150, 60, 140, 255))
    for box in ((0.3, 0.42, 0.44, 0.56), (0.56, 0.44, 0.68, 0.56)):
        d.ellipse(_scaled(box), fill=(245, 240, 225, 255))


def draw_fish(d: ImageDraw.ImageDraw) -> None:
    """Held out of the starter's training: an orange fish with a tail, a fin, stripes and an eye."""
    d.polygon(_scaled((0.62, 0.5, 0.97, 0.2, 0.97, 0.8)), fill=(200, 80, 20, 255))
    d.ellipse(_scaled((0.04, 0.22, 0.74, 0.78)), fill=(245, 130, 30, 255))
    d.polygon(_scaled((0.3, 0.24, 0.5, 0.08, 0.56, 0.28)), fill=(200, 80, 20, 255))
    for x in (0.34, 0.5):
        d.rectangle(_scaled((x, 0.26, x + 0.06, 0.74)), fill=(255, 245, 235, 255))
    d.ellipse(_scaled((0.14, 0.38, 0.24, 0.48)), fill=(20, 20, 40, 255))


def draw_house(d: ImageDraw.ImageDraw) -> None:
    """Held out of the starter's training: a house with a red roof, a blue door and a yellow window."""
    d.polygon(_scaled((0.02, 0.46, 0.5, 0.04, 0.98, 0.46)), fill=(190, 40, 40, 255))
    d.rectangle(_scaled((0.12, 0.46, 0.88, 0.96)), fill=(235, 225, 200, 255))
    d.rectangle(_scaled((0.42, 0.62, 0.6, 0.96)), fill=(40, 80, 170, 255))
    d.rectangle(_scaled((0.18, 0.56, 0.34, 0.72)), fill=(250, 210, 60, 255))
    d.rectangle(_scaled((0.66, 0.56, 0.82, 0.72)), fill=(250, 210, 60, 255))


# Not shipped as models of their own: the starter's drawing and two targets kept out of its training set.
OTHER_DRAWINGS: dict[str, Callable[[ImageDraw.ImageDraw], None]] = {
    "pebble": draw_pebble, "fish": draw_fish, "house": draw_house}

EXAMPLES: dict[str, tuple[Callable[[ImageDraw.ImageDraw], None], int]] = {
    # name: (drawing, training seed)
    "smiley": (draw_smiley, 1),
    "heart": (draw_heart, 2),
    "apple": (draw_apple, 3),
    "ladybug": (draw_ladybug, 4),
    "beachball": (draw_beachball, 5),
    "mushroom": (draw_mushroom, 6),
    "flower": (draw_flower, 7),
    "leaf": (draw_leaf, 8),
}


def draw(name: str, out_dir: Path = ROOT / "models") -> Path:
    img = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    (OTHER_DRAWINGS[name] if name in OTHER_DRAWINGS else EXAMPLES[name][0])(ImageDraw.Draw(img))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    img.resize((PNG_SIZE, PNG_SIZE), Image.LANCZOS).save(path, optimize=True)
    return path


def train(name: str, minutes: float | None = None, out_dir: Path = ROOT / "models", seed: int | None = None,
          continue_with: str | None = None, iterations: int | None = None) -> Path:
    """Train one example from random weights, or with `continue_with` (a damage: strokes, circle) go on from
    the shipped models/<name>.safetensors with that damage (same target: its optimizer state too).
    `iterations` instead of a time budget: a fixed count, with the budget recipe's batch, pool, damaged share
    and learning-rate drop (at 60 %), so that a loaded machine trains as much as a quiet one."""
    png = draw(name, out_dir)
    init = modelfile.load(ROOT / "models" / f"{name}.safetensors") if continue_with else None
    options = {**RECIPE, "name": name, "seed": EXAMPLES[name][1] if seed is None else seed,
               **({"minutes": minutes} if minutes else {})}
    if continue_with:
        options.update(damage=continue_with, start_from=f"example-{name}")
    if iterations:
        options.pop("minutes")
        options.update(iterations=iterations, lr_decay_at=round(0.6 * iterations), batch_size=4, pool_size=128,
                       damage_count=1)
    spec = JobSpec.from_options(options)
    trainer = spec.trainer(load_target(png, spec.target), init=init)
    out = out_dir / f"{name}.safetensors"
    log_dir = ROOT / "artifacts" / "examples" if out_dir == ROOT / "models" else out_dir
    log_path = log_dir / f"{name}.csv"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        log.write("iteration,seconds,loss\n")

        def on_progress(p) -> None:
            log.write(f"{p.iteration},{time.perf_counter() - start:.1f},{p.loss:.6f}\n")
            if p.iteration % 50 == 0:
                log.flush()
                print(f"{name}: {p.iteration}/{p.total} loss {p.loss:.5f} {p.iterations_per_second:.2f} it/s",
                      flush=True)

        result = trainer.run(on_progress=on_progress, on_checkpoint=lambda mf: modelfile.save(mf, out))
    print(f"{name}: {result.status} after {result.iteration} iterations, loss {result.loss:.5f}, "
          f"{time.perf_counter() - start:.0f} s; wrote {out}")
    write_card(name, out_dir)
    return out


def write_card(name: str, out_dir: Path = ROOT / "models") -> Path:
    """The model card next to the model (models/<name>.card.json), tied to the file by its SHA-256."""
    data = (out_dir / f"{name}.safetensors").read_bytes()
    card = model_card(modelfile.from_bytes(data), model_sha256=hashlib.sha256(data).hexdigest())
    path = out_dir / f"{name}.card.json"
    modelfile.write_atomic(path, (json.dumps(card, indent=1) + "\n").encode())
    print(summary(card))
    return path


def quality(x: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(training loss: RGBA MSE, PSNR in dB of the RGB on white) of states x vs the target."""
    loss = (to_rgba(x) - target).pow(2).mean().item()
    mse = (to_rgb(x) - to_rgb(target[None])).pow(2).mean().item()
    return loss, 10 * math.log10(1.0 / max(mse, 1e-12))


def evaluate(name: str, samples: int = 8, path: Path | None = None) -> str:
    """Grow the shipped model from the seed (several random runs) and report how close it gets."""
    mf = modelfile.load(path or ROOT / "models" / f"{name}.safetensors")
    h, w = mf.info.grid_height, mf.info.grid_width
    g = torch.Generator().manual_seed(0)
    x = grow(mf.model, make_seed(h, w, batch=samples), int(RECIPE["max_steps"]), generator=g)
    grown = quality(x, mf.target)
    x = grow(mf.model, x, 300 - int(RECIPE["max_steps"]), generator=g)
    at300 = quality(x, mf.target)
    persisted = quality(grow(mf.model, x, 700, generator=g), mf.target)
    erase_circle(x, w / 2, h / 2, min(h, w) / 5)  # the CLI's default damage: a fifth of the grid
    regrown = quality(grow(mf.model, x, 700, generator=g), mf.target)
    return (f"{name}: {mf.info.iterations} iterations; loss {grown[0]:.4f} (PSNR {grown[1]:.1f} dB) after "
            f"{RECIPE['max_steps']} steps, {at300[0]:.4f} ({at300[1]:.1f} dB) after 300, {persisted[0]:.4f} "
            f"({persisted[1]:.1f} dB) after 1000; erased at 300 (radius {min(h, w) / 5:.1f}): {regrown[0]:.4f} "
            f"({regrown[1]:.1f} dB) at 1000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(EXAMPLES), action="append", help="example(s) to make")
    parser.add_argument("--draw-only", action="store_true", help="only draw the target PNGs")
    parser.add_argument("--evaluate", action="store_true", help="only report how well the shipped models grow")
    parser.add_argument("--cards", action="store_true", help="only write the model cards of the shipped models")
    parser.add_argument("--minutes", type=float, help="override the recipe's time budget")
    parser.add_argument("--seed", type=int, help="override the example's training seed")
    parser.add_argument("--iterations", type=int, help="a fixed number of iterations instead of a time budget")
    parser.add_argument("--continue-with", choices=["strokes", "circle"],
                        help="go on training the shipped model with this damage (write to --out-dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one per example in parallel)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "models", help="where to write (default models/)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only or list(EXAMPLES):
        if args.evaluate:
            print(evaluate(name, path=args.out_dir / f"{name}.safetensors"))
        elif args.cards:
            print(write_card(name, args.out_dir))
        else:
            print(draw(name, args.out_dir) if args.draw_only else train(name, args.minutes, args.out_dir, args.seed,
                                                                         args.continue_with, args.iterations))


if __name__ == "__main__":
    main()
