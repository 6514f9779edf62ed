"""Core benchmark: our NCA code vs the straightforward baseline, side by side in one run.

    make bench                                   # or:
    .venv/bin/python benchmarks/bench_core.py [--threads N] [--iterations N] [--baseline-iterations N]

Paper configuration: 72x72 grid, batch 8, 16 channels, 128 hidden, 80 CA steps per training
iteration (the mean of the paper's 64-95), the regenerating batch of the paper's loop (one seed,
seven pool states, three of them damaged). The states are what a pool holds mid-training: the
article's regenerating lizard (imported from ../shared, when present) grown for 200 steps;
without ../shared, a random model and random blob states of the same size stand in.

Prints machine, torch version, threads and the load average (the figures are only comparable
within one run), the measured fp32 matmul rate, then seconds per training iteration and
inference cell-steps per second for both implementations. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.nca import fast  # noqa: E402
from backend.nca.distill import import_distill  # noqa: E402
from backend.nca.model import NCA, damage_circles, make_seed  # noqa: E402
from backend.nca.train import TrainConfig, Trainer  # noqa: E402
from benchmarks.baseline import BaselineCA, train_iteration  # noqa: E402

GRID, BATCH, STEPS, STREAM_BATCH = 72, 8, 80, 32
LIZARD = ROOT.parent / "shared" / "reference" / "distill-webgl-models" / "regenerating_lizard.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of an n x n matmul: the machine's practical arithmetic peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def forward_flops_per_cell(model: NCA) -> int:
    """Multiply-adds of the two per-cell layers, x2 (the perception's 9-tap sums are not counted)."""
    c, h = model.channels, model.hidden
    return 2 * (3 * c * h + h * c)


def workload() -> tuple[NCA, torch.Tensor, str]:
    """A model and pool-like grown states on the paper's grid."""
    g = torch.Generator().manual_seed(0)
    if LIZARD.exists():
        model = import_distill(LIZARD).model
        grown = fast.grow(model, make_seed(GRID, GRID), 200, generator=g)
        return model, grown.repeat(BATCH - 1, 1, 1, 1), "regenerating_lizard (Distill weights), grown 200 steps"
    torch.manual_seed(0)
    model = NCA()
    torch.nn.init.normal_(model.hidden_to_update.weight, 0.0, 0.02)
    states = torch.rand(BATCH - 1, model.channels, GRID, GRID, generator=g)
    ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    states *= ((ys - GRID / 2) ** 2 + (xs - GRID / 2) ** 2 < (GRID * 0.3) ** 2).float()
    return model, states, "random model, random 43-cell-wide blobs (../shared absent)"


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_training(model: NCA, pool_states: torch.Tensor, our_iterations: int,
                   baseline_iterations: int) -> dict[str, dict[str, float]]:
    target = pool_states[0, :4].clone()
    config = TrainConfig(min_steps=STEPS, max_steps=STEPS + 1, pool_size=64, seed=1)
    trainer = Trainer(target, config)
    trainer.model.load_state_dict(model.state_dict())
    trainer.pool = pool_states[torch.arange(64) % len(pool_states)].clone()
    stats: dict[str, int] = {}
    # Our Trainer's own iteration; the rollout is the one Trainer.rollout runs, plus a cell counter.
    trainer.rollout = lambda x, steps: fast.rollout(trainer.model, x, steps, generator=trainer.generator,
                                                    stats=stats)

    baseline = BaselineCA.from_nca(model)
    optimizer = torch.optim.Adam(baseline.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(2)

    def baseline_step() -> None:
        x = torch.cat([make_seed(GRID, GRID), pool_states]).contiguous()
        x[-3:] *= damage_circles(3, GRID, GRID, g)
        train_iteration(baseline, optimizer, x, target, STEPS, g)

    ours, base = [], []
    timed(trainer.train_step), timed(baseline_step)  # warm-up
    stats.clear()
    for i in range(max(our_iterations, baseline_iterations)):
        if i < our_iterations:
            ours.append(timed(trainer.train_step))
        if i < baseline_iterations:
            base.append(timed(baseline_step))
    return {"ours": summarise(ours, stats["cell_steps"] / our_iterations),
            "baseline": summarise(base, BATCH * GRID * GRID * STEPS)}


def summarise(samples: list[tuple[float, float]], cell_steps: float) -> dict[str, float]:
    return {"wall": statistics.median(s[0] for s in samples), "cpu": statistics.median(s[1] for s in samples),
            "cell_steps": cell_steps, "n": len(samples)}


def bench_inference(model: NCA, states: torch.Tensor, steps: int) -> dict[str, dict[str, float]]:
    baseline = BaselineCA.from_nca(model)
    g = torch.Generator().manual_seed(3)
    stats: dict[str, int] = {}

    def ours() -> None:
        fast.step_batch(model, states, generator=g, steps=steps, stats=stats)

    def base() -> None:
        with torch.inference_mode():
            x = states
            for _ in range(steps):
                x = baseline(x, g)

    results = {}
    for name, fn in (("ours", ours), ("baseline", base)):
        fn()  # warm-up
        stats.clear()
        samples = [timed(fn) for _ in range(3)]
        cells = stats["cell_steps"] / 3 if name == "ours" else states.shape[0] * GRID * GRID * steps
        results[name] = summarise(samples, cells)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--iterations", type=int, default=5, help="timed training iterations of ours")
    parser.add_argument("--baseline-iterations", type=int, default=3, help="timed training iterations of the baseline")
    parser.add_argument("--inference-steps", type=int, default=10, help="CA steps per timed inference call")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, pool_states, source = workload()
    flops = forward_flops_per_cell(model)
    load_before = os.getloadavg()
    peak = matmul_gflops()
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    print(f"load average at start: {load_before[0]:.1f} (1 min)   matmul fp32 2048^3: {peak:.1f} GFLOP/s")
    print(f"states: {source}; grid {GRID}x{GRID}, batch {BATCH}, {STEPS} steps, "
          f"{model.channels}/{model.hidden}, {flops} FLOP per cell-step forward\n")

    train = bench_training(model, pool_states, args.iterations, args.baseline_iterations)
    print("training iteration (rollout + backward + Adam), median")
    print(f"{'':10s} {'s/iter wall':>12s} {'s/iter cpu':>11s} {'cells computed':>15s} {'GFLOP/s':>8s} "
          f"{'of matmul':>10s}")
    for name, r in train.items():
        gflops = 3 * flops * r["cell_steps"] / r["wall"] / 1e9  # forward + two backward GEMMs
        print(f"{name:10s} {r['wall']:12.3f} {r['cpu']:11.3f} {r['cell_steps'] / STEPS / BATCH:11.0f}/img "
              f"{gflops:8.1f} {gflops / peak:9.0%}")
    speedup = train["baseline"]["wall"] / train["ours"]["wall"]
    dense = 3 * flops * BATCH * GRID * GRID * STEPS / train["ours"]["wall"] / 1e9
    print(f"speed-up {speedup:.2f}x; ours at dense-grid-equivalent {dense:.1f} GFLOP/s "
          f"({dense / peak:.0%} of matmul)\n")

    grid_dense = pool_states.clone()
    grid_dense[:, 3] = 1.0  # every cell alive: the bounding box is the whole grid
    cases = [("paper batch", torch.cat([make_seed(GRID, GRID), pool_states])),
             ("stream batch", pool_states[torch.arange(STREAM_BATCH) % len(pool_states)].contiguous()),
             ("stream, all alive", grid_dense[torch.arange(STREAM_BATCH) % len(grid_dense)].contiguous())]
    print(f"inference ({args.inference_steps} steps per call, median of 3)")
    print(f"{'':28s} {'cell-steps/s':>13s} {'grid-steps/s':>13s} {'GFLOP/s':>8s}")
    for label, states in cases:
        for name, r in bench_inference(model, states, args.inference_steps).items():
            dense_cells = states.shape[0] * GRID * GRID * args.inference_steps
            print(f"{label + ' (' + str(states.shape[0]) + '), ' + name:28s} {dense_cells / r['wall']:13.3g} "
                  f"{dense_cells / r['wall'] / GRID / GRID:13.0f} {flops * r['cell_steps'] / r['wall'] / 1e9:8.1f}")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}; matmul again: {matmul_gflops():.1f} GFLOP/s")


if __name__ == "__main__":
    main()
