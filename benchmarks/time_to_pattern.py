"""Time to a pattern: time budgets vs the paper recipe stopped at the same wall-clock times.

    .venv/bin/python benchmarks/time_to_pattern.py                          # 3 targets, 5 and 10 min, 40 cells
    .venv/bin/python benchmarks/time_to_pattern.py --budgets 5 10 30 --targets smiley
    .venv/bin/python benchmarks/time_to_pattern.py --size 24 --padding 6 --budgets 5   # the preview size
    .venv/bin/python benchmarks/time_to_pattern.py --plot a/curves-40.csv b/curves-40.csv --out docs/ttp  # one plot

For each target (drawn by scripts/make_examples.py: no third-party pictures) and each budget, one
job with `minutes` trains through `Trainer.run` exactly as a worker does (the plan from this
machine's calibrated speed, re-planned as it measures); then one run of the paper recipe is
stopped at the same wall-clock times (its clock paused while it is measured). Each model is
measured like the model card does: the PSNR of the RGB on white against the target, mean over
`--runs` stochastic growths from the seed, after the growth steps (the recipe's max_steps) and
after 1000 steps. Also printed: the iterations trained, the budget overrun and the estimate the
API would have given (`backend.nca.budget.estimate` at the calibrated speed) next to the time
taken. Writes the table (Markdown), the curves (CSV) and a plot (PNG) to --out.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_examples import draw  # noqa: E402

from backend.nca import evaluate  # noqa: E402
from backend.nca.budget import estimate  # noqa: E402
from backend.nca.fast import grow  # noqa: E402
from backend.nca.jobspec import JobSpec  # noqa: E402
from backend.nca.model import make_seed, to_rgb  # noqa: E402
from backend.nca.target import load_target  # noqa: E402
from backend.nca.train import Trainer, calibrate  # noqa: E402

CAP = 20_000  # the iteration cap of a budget (the server's default NCA_MAX_ITERATIONS)


def measure(trainer: Trainer, growth_steps: int, runs: int) -> tuple[float, float]:
    """(PSNR after `growth_steps`, PSNR after 1000 steps) from the seed, mean squared error over `runs`."""
    reference = to_rgb(trainer.target[None])[0]
    generator = torch.Generator().manual_seed(evaluate.SEED)
    x = grow(trainer.model, make_seed(trainer.height, trainer.width, batch=runs), growth_steps, generator=generator)
    grown = evaluate.psnr(to_rgb(x), reference)
    x = grow(trainer.model, x, 1000 - growth_steps, generator=generator)
    return grown, evaluate.psnr(to_rgb(x), reference)


def budget_run(target: torch.Tensor, options: dict, minutes: float, speed, runs: int) -> dict:
    spec = JobSpec.from_options({**options, "minutes": minutes, "iterations": CAP})
    expected = estimate(spec.train, spec.target.size, spec.target.padding, speed)
    trainer = Trainer(target, spec.train, target_size=spec.target.size, padding=spec.target.padding, speed=speed)
    curve: list[tuple[float, int, float]] = []
    result = trainer.run(on_progress=lambda p: curve.append((p.trained_seconds, p.iteration, p.loss)))
    grown, at_1000 = measure(trainer, spec.train.max_steps, runs)
    plan = result.model_file.info.extra["plan"]
    return {"recipe": f"budget {minutes:g} min", "minutes": minutes, "seconds": trainer.trained_seconds,
            "iterations": result.iteration, "grown": grown, "at_1000": at_1000, "first_plan": expected.iterations,
            "lr_decay_at": plan["lr_decay_at"], "short_until": plan["short_until"], "curve": curve}


def paper_run(target: torch.Tensor, options: dict, stops: list[float], runs: int, speed) -> tuple[list[dict], list]:
    """The paper recipe (as `Trainer.train_step` runs it), measured at each of `stops` minutes of training;
    the last row also says what the estimate would have said of an iteration on the grown pattern."""
    spec = JobSpec.from_options(options)
    expected = estimate(spec.train, spec.target.size, spec.target.padding, speed)
    trainer = Trainer(target, spec.train, target_size=spec.target.size, padding=spec.target.padding)
    rows, curve, trained = [], [], 0.0
    for minutes in sorted(stops):
        while trained < minutes * 60 and trainer.iteration < spec.train.iterations:
            start = time.perf_counter()
            loss = trainer.train_step()
            trained += time.perf_counter() - start
            curve.append((trained, trainer.iteration, loss))
        grown, at_1000 = measure(trainer, spec.train.max_steps, runs)  # off the clock
        rows.append({"recipe": "paper", "minutes": minutes, "seconds": trained, "iterations": trainer.iteration,
                     "grown": grown, "at_1000": at_1000})
    late = curve[-max(2, len(curve) // 10):]  # the last tenth: the pattern grown, as the estimate assumes
    measured = (late[-1][0] - late[0][0]) / (late[-1][1] - late[0][1])
    rows[-1]["iteration_seconds"] = (measured, expected.iteration_seconds)
    return rows, curve


def plot(curves: dict[str, list[tuple[float, int, float]]], path: Path, width: int = 900, height: int = 420) -> None:
    """Loss (log scale, smoothed over 25 iterations) against minutes, one line per run: Pillow only."""
    colours = [(220, 50, 47), (38, 139, 210), (133, 153, 0), (211, 54, 130), (42, 161, 152), (181, 137, 0),
               (108, 113, 196), (203, 75, 22), (88, 110, 117)]
    image = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 220, 20, height - 40
    t_max = max((c[-1][0] for c in curves.values() if c), default=1.0) / 60
    lo, hi = -3.0, -0.7  # log10 loss
    d.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    for k in range(int(lo), int(hi) + 1):
        if lo <= k <= hi:
            y = bottom - (k - lo) / (hi - lo) * (bottom - top)
            d.line((left, y, right, y), fill=(225, 225, 225))
            d.text((8, y - 6), f"1e{k}", fill=(60, 60, 60))
    step = 1 if t_max <= 12 else 5
    for m in range(0, int(t_max) + 1, step):
        x = left + m / t_max * (right - left)
        d.text((x - 4, bottom + 6), str(m), fill=(60, 60, 60))
    d.text(((left + right) / 2 - 30, height - 18), "minutes of training", fill=(0, 0, 0))
    d.text((left, 2), "batch loss (RGBA MSE), mean of 25 iterations, log scale", fill=(0, 0, 0))
    for i, (name, curve) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        points = []
        for j in range(24, len(curve), 5):
            window = curve[j - 24: j + 1]
            loss = sum(c[2] for c in window) / len(window)
            x = left + window[-1][0] / 60 / t_max * (right - left)
            y = bottom - (min(max(math.log10(max(loss, 1e-9)), lo), hi) - lo) / (hi - lo) * (bottom - top)
            points.append((x, y))
        if len(points) > 1:
            d.line(points, fill=colour, width=2)
        d.line((right + 12, top + 14 + 18 * i, right + 32, top + 14 + 18 * i), fill=colour, width=3)
        d.text((right + 38, top + 8 + 18 * i), name, fill=(0, 0, 0))
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["smiley", "heart", "apple"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[5.0, 10.0], help="minutes")
    parser.add_argument("--size", type=int, default=40, help="target size in cells (the paper's 40)")
    parser.add_argument("--padding", type=int, default=16)
    parser.add_argument("--no-paper", action="store_true", help="skip the paper recipe runs")
    parser.add_argument("--runs", type=int, default=4, help="stochastic growths per measurement")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "time_to_pattern")
    parser.add_argument("--plot", type=Path, nargs="+", help="only plot these curves-<size>.csv files together")
    args = parser.parse_args()
    if args.plot:
        curves: dict[str, list] = {}
        for path in args.plot:
            with path.open() as f:
                for row in csv.DictReader(f):
                    curves.setdefault(row["run"], []).append((float(row["seconds"]), int(row["iteration"]),
                                                              float(row["loss"])))
        args.out.mkdir(parents=True, exist_ok=True)
        plot(curves, args.out / f"loss-{args.size}.png", height=460)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    speed = calibrate()
    print(f"# {args.size}-cell targets, padding {args.padding}, regenerating; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, commit {commit.strip()}, load {os.getloadavg()[0]:.1f}; calibrated "
          f"{speed.cell_step_seconds:.3g} s per cell-step + {speed.step_seconds:.3g} s per step", flush=True)
    rows, curves = [], {}
    options = {"target_size": args.size, "padding": args.padding, "experiment": "regenerating", "seed": args.seed}
    header = "| target | recipe | minutes | trained s | iterations | grown dB | after 1000 steps dB | load |"
    print(header + "\n|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for name in args.targets:
        spec = JobSpec.from_options(options)
        target = load_target(draw(name, args.out), spec.target)
        runs = [budget_run(target, options, minutes, speed, args.runs) for minutes in args.budgets]
        for run in runs:
            curves[f"{name} {run['recipe']}"] = run.pop("curve")
        if not args.no_paper:
            paper_rows, curves[f"{name} paper"] = paper_run(target, options, args.budgets, args.runs, speed)
            runs += paper_rows
        for run in runs:
            run.update(target=name, load=os.getloadavg()[0])
            rows.append(run)
            print(f"| {name} | {run['recipe']} | {run['minutes']:g} | {run['seconds']:.0f} | {run['iterations']} | "
                  f"{run['grown']:.1f} | {run['at_1000']:.1f} | {run['load']:.1f} |", flush=True)
            if "first_plan" in run:
                print(f"#   plan: {run['first_plan']} iterations at the calibrated speed, {run['iterations']} "
                      f"trained (short steps until {run['short_until']}, lr drop at {run['lr_decay_at']}); "
                      f"budget overrun {100 * (run['seconds'] / (run['minutes'] * 60) - 1):+.1f} %", flush=True)
            if "iteration_seconds" in run:
                measured, expected = run["iteration_seconds"]
                print(f"#   paper: {measured:.3f} s per iteration at the end, estimated {expected:.3f} "
                      f"(x{expected / measured:.2f}): the full 8000 iterations ~{8000 * measured / 3600:.1f} h",
                      flush=True)
    with (args.out / f"curves-{args.size}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "seconds", "iteration", "loss"])
        for name, curve in curves.items():
            writer.writerows([name, f"{s:.2f}", i, f"{loss:.6f}"] for s, i, loss in curve)
    plot(curves, args.out / f"loss-{args.size}.png")
    budget = [r for r in rows if r["recipe"] != "paper"]
    for minutes in args.budgets:
        mine = [r for r in budget if r["minutes"] == minutes]
        paper = [r for r in rows if r["recipe"] == "paper" and r["minutes"] == minutes]
        line = f"# {minutes:g} min: budget mean {sum(r['grown'] for r in mine) / len(mine):.1f} dB grown, " \
               f"{sum(r['at_1000'] for r in mine) / len(mine):.1f} dB at 1000"
        if paper:
            line += f"; paper {sum(r['grown'] for r in paper) / len(paper):.1f} / " \
                    f"{sum(r['at_1000'] for r in paper) / len(paper):.1f} dB"
        print(line)
    print(f"# wrote {args.out}/loss-{args.size}.png and curves-{args.size}.csv; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
