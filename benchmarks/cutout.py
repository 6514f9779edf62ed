"""Photos with and without the subject cut-out: share of the grid kept and the grown PSNR.

    .venv/bin/python benchmarks/cutout.py astronaut.png chelsea.png coffee.png --out-dir docs/cutout
    .venv/bin/python benchmarks/cutout.py *.png --targets-only --backgrounds cutout,key,keep   # no training

For each photo, the target at the `preview` preset's size (24 cells, padding 6) with `cutout` and
with `keep` (the whole photo), then a model trained on each (the preset's recipe, `regenerating`,
seed 0, one after the other), grown from the seed `--samples` times: PSNR of the RGB on white
against its own target after `max_steps` (48) and after 200 steps, mean over the runs. Prints a
table (markdown) and writes small pictures: the photo, each target and what each model grows.
The photos in docs/benchmarks.md are scikit-image's bundled samples (see there); any photo works.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.nca.model import make_seed, to_rgb  # noqa: E402
from backend.nca.render import rgb8, upscale  # noqa: E402
from backend.nca.target import TargetOptions, open_image, prepare_target  # noqa: E402
from backend.nca.train import PRESETS, TrainConfig, Trainer  # noqa: E402

PREVIEW = PRESETS["preview"]
SCALE = 4  # pixels per cell in the saved pictures


def psnr(x: torch.Tensor, target: torch.Tensor) -> list[float]:
    """PSNR (dB) of each state's RGB on white against the target's."""
    mse = (to_rgb(x) - to_rgb(target[None])).pow(2).mean(dim=(1, 2, 3))
    return [10 * math.log10(1.0 / max(float(m), 1e-12)) for m in mse]


def targets_only(photo: Path, backgrounds: list[str]) -> None:
    """The grid share each background treatment leaves, and the CPU time of the processing."""
    img = open_image(photo)
    for background in backgrounds:
        start = time.process_time()
        processed = prepare_target(img, TargetOptions(int(PREVIEW["size"]), int(PREVIEW["padding"]), background))
        _, h, w = processed.target.shape
        print(f"| {photo.stem} | {img.width}x{img.height} | {background} -> {processed.background} | {w}x{h} "
              f"| {processed.filled:.1%} | {time.process_time() - start:.2f} | {processed.warning or ''} |", flush=True)


def run(photo: Path, background: str, args: argparse.Namespace) -> dict:
    img = open_image(photo)
    start = time.perf_counter()
    processed = prepare_target(img, TargetOptions(int(PREVIEW["size"]), int(PREVIEW["padding"]), background))
    cut_seconds = time.perf_counter() - start
    config = TrainConfig.from_dict({**PREVIEW, "experiment": "regenerating", "seed": 0,
                                    **({"iterations": args.iterations} if args.iterations else {})})
    trainer = Trainer(processed.target, config)
    load_start, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    while trainer.iteration < config.iterations:
        trainer.train_step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        x = trainer.model.grow(make_seed(trainer.height, trainer.width, batch=args.samples), config.max_steps,
                               generator=g)
        grown = psnr(x, trainer.target)
        first = rgb8(x[0])
        x = trainer.model.grow(x, 200 - config.max_steps, generator=g)
        later = psnr(x, trainer.target)
    name = photo.stem
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        upscale(rgb8(processed.target), SCALE).save(args.out_dir / f"{name}-target-{background}.png", optimize=True)
        upscale(first, SCALE).save(args.out_dir / f"{name}-grown-{background}.png", optimize=True)
        before = img.convert("RGB")
        before.thumbnail((trainer.width * SCALE, trainer.height * SCALE), Image.LANCZOS)
        before.save(args.out_dir / f"{name}-photo.png", optimize=True)
    return {"photo": name, "background": processed.background, "warning": processed.warning,
            "filled": processed.filled, "grid": f"{trainer.width}x{trainer.height}", "cut_seconds": cut_seconds,
            "iterations": trainer.iteration, "wall": wall, "cpu": cpu, "load": (load_start, os.getloadavg()[0]),
            "psnr": float(np.mean(grown)), "psnr_sd": float(np.std(grown)), "psnr_200": float(np.mean(later))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, nargs="+")
    parser.add_argument("--backgrounds", default="cutout,keep", help="comma-separated, in this order")
    parser.add_argument("--iterations", type=int, help=f"default: the preset's {PREVIEW['iterations']}")
    parser.add_argument("--samples", type=int, default=8, help="growth runs per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, help="write the pictures here")
    parser.add_argument("--targets-only", action="store_true", help="only the targets: grid share, CPU time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    if args.targets_only:
        print("| photo | pixels | background | grid | grid filled | CPU s | warning |\n|---|---|---|---|---:|---:|---|")
        for photo in args.photos:
            targets_only(photo, args.backgrounds.split(","))
        return
    print("| photo | background | grid | grid filled | cut-out s | iterations | wall s | CPU s | load avg "
          "| PSNR at 48 steps (sd) | PSNR at 200 |", flush=True)
    print("|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|", flush=True)
    for photo in args.photos:
        for background in args.backgrounds.split(","):
            r = run(photo, background, args)
            print(f"| {r['photo']} | {r['background']} | {r['grid']} | {r['filled']:.1%} | {r['cut_seconds']:.2f} "
                  f"| {r['iterations']} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['load'][0]:.1f}-{r['load'][1]:.1f} "
                  f"| {r['psnr']:.1f} dB ({r['psnr_sd']:.1f}) | {r['psnr_200']:.1f} dB |", flush=True)
            if r["warning"]:
                print(f"#   warning: {r['warning']}", flush=True)


if __name__ == "__main__":
    main()
