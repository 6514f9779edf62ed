"""Loss against wall time for a named recipe (backend.nca.train.PRESETS), for docs/benchmarks.md.

    .venv/bin/python benchmarks/loss_curve.py --preset paper --image models/smiley.png --seconds 600

Trains with our Trainer until the recipe's iterations are done or `--seconds` have passed, and
prints (every `--every` iterations) seconds, iteration and the batch loss; at the end, the loss
and PSNR of the RGB grown from the seed against the target (8 runs, after `max_steps` steps).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.nca import modelfile  # noqa: E402
from backend.nca.fast import grow  # noqa: E402
from backend.nca.jobspec import JobSpec  # noqa: E402
from backend.nca.model import make_seed, to_rgb, to_rgba  # noqa: E402
from backend.nca.target import load_target  # noqa: E402
from backend.nca.train import PRESETS, Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="preview")
    parser.add_argument("--image", type=Path, default=ROOT / "models" / "smiley.png")
    parser.add_argument("--experiment", default="regenerating")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also save the trained model file here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = JobSpec.from_options({**PRESETS[args.preset], "experiment": args.experiment, "seed": args.seed})
    target, config = load_target(args.image, spec.target), spec.train
    trainer = Trainer(target, config)
    print(f"# {args.preset} on {args.image.name}: grid {trainer.height}x{trainer.width}, {config.iterations} "
          f"iterations, steps {config.min_steps}-{config.max_steps - 1}; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print("seconds,iteration,loss", flush=True)
    start = time.perf_counter()
    while trainer.iteration < config.iterations and time.perf_counter() - start < args.seconds:
        loss = trainer.train_step()
        if trainer.iteration % args.every == 0:
            print(f"{time.perf_counter() - start:.1f},{trainer.iteration},{loss:.5f}", flush=True)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        x = grow(trainer.model, make_seed(trainer.height, trainer.width, batch=8), config.max_steps, generator=g)
        loss = (to_rgba(x) - trainer.target).pow(2).mean().item()
        mse = (to_rgb(x) - to_rgb(trainer.target[None])).pow(2).mean().item()
    if args.out:
        modelfile.save(trainer.export(), args.out)
    print(f"# after {trainer.iteration} iterations, {time.perf_counter() - start:.0f} s: grown loss {loss:.4f}, "
          f"PSNR {10 * math.log10(1 / max(mse, 1e-12)):.1f} dB; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
