"""How long the model card and the videos take: what the worker (card) and the API (videos) spend.

    .venv/bin/python benchmarks/bench_exports.py                 # 1 and 2 torch threads
    .venv/bin/python benchmarks/bench_exports.py --threads 2 --no-video

Models: a shipped example (36 x 36), the article's regenerating lizard (72 x 72, from ../shared when
present) and a random rule that explodes (72 x 72: every cell alive, the fast path's worst case).
Prints one markdown table row per (model, threads) with wall and CPU seconds and the load average;
figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.exports.card import model_card  # noqa: E402
from backend.exports.video import render_video  # noqa: E402
from backend.nca import modelfile  # noqa: E402
from backend.nca.distill import import_distill  # noqa: E402
from backend.nca.model import NCA  # noqa: E402
from backend.nca.modelfile import ModelFile, ModelInfo  # noqa: E402

LIZARD = ROOT.parent / "shared" / "reference" / "distill-webgl-models" / "regenerating_lizard.json"


def exploding() -> ModelFile:
    torch.manual_seed(1)
    model = NCA()
    with torch.no_grad():
        model.hidden_to_update.weight.normal_(0.0, 0.1)
        model.hidden_to_update.bias.normal_(0.0, 0.1)
    return ModelFile(model, ModelInfo(grid_height=72, grid_width=72, name="random (explodes)"))


def timed(fn) -> tuple[float, float]:  # noqa: ANN001
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, action="append", help="torch threads (repeatable; default 1 and 2)")
    parser.add_argument("--no-video", action="store_true")
    args = parser.parse_args()
    models = [("heart (example, 36x36)", modelfile.load(ROOT / "models" / "heart.safetensors"))]
    if LIZARD.exists():
        models.append(("regenerating_lizard (72x72)", import_distill(LIZARD)))
    models.append(("random rule that explodes (72x72)", exploding()))
    print("| model | what | threads | wall s | CPU s | load average (1 min) |")
    print("|---|---|---:|---:|---:|---:|")
    for threads in args.threads or [1, 2]:
        torch.set_num_threads(threads)
        for name, mf in models:
            jobs = [("card", lambda mf=mf: model_card(mf))]
            if not args.no_video:
                jobs += [(f"video.{fmt} (300 steps)", lambda mf=mf, fmt=fmt: render_video(mf, fmt))
                         for fmt in ("gif", "webp", "mp4")]
            for what, job in jobs:
                wall, cpu = timed(job)
                print(f"| {name} | {what} | {threads} | {wall:.1f} | {cpu:.1f} | {os.getloadavg()[0]:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
