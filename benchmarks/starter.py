"""One budgeted training run on one of our drawings, from random weights, the starter or a model file; and trials.

    .venv/bin/python benchmarks/starter.py --target fish --minutes 5                  # from random weights
    .venv/bin/python benchmarks/starter.py --target fish --minutes 5 --init starter   # from models/starter
    .venv/bin/python benchmarks/starter.py --target fish --minutes 5 --init a.safetensors --save b.safetensors
    .venv/bin/python benchmarks/starter.py --target fish --minutes 1 --trial bf16     # reduced precision
    .venv/bin/python benchmarks/starter.py --target fish --minutes 1 --trial truncate:16
    .venv/bin/python benchmarks/starter.py --target pebble --minutes 8 --damage strokes --name starter \
        --save models/starter.safetensors                                              # (re)train the starter

The run is what a worker does with a time budget (`JobSpec.trainer`, `Trainer.run`, the plan from the
calibrated speed), one torch thread by default. `--init` starts from a model's weights (the starter:
models/starter.safetensors), with its optimizer state when it trained on this very target (continue).
Measured like benchmarks/time_to_pattern.py: PSNR of the RGB on white, mean over `--runs` growths from
the seed, after the growth steps (max_steps) and after 1000 steps. Prints one Markdown row with the
load average (1 minute) at the start and at the end, and the iterations trained.

Trials (not in the trainer: kept here until they measurably help, docs/benchmarks.md "Trials"):
`bf16` runs the rollout and the loss under CPU autocast to bfloat16; `truncate:K` runs the first K CA steps
of each iteration without autograd (no gradient through them; same random draws, same trajectory).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_examples import draw  # noqa: E402
from time_to_pattern import CAP, measure  # noqa: E402

from backend.nca import fast, modelfile  # noqa: E402
from backend.nca.jobspec import JobSpec  # noqa: E402
from backend.nca.target import load_target  # noqa: E402
from backend.nca.train import Trainer, calibrate  # noqa: E402


class TrialTrainer(Trainer):
    """The trainer with one trial: reduced precision or truncated backpropagation through the first steps."""

    trial: str = ""

    def rollout(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        if self.trial.startswith("truncate:"):
            skip = min(int(self.trial.split(":")[1]), steps - 1)
            with torch.no_grad():
                x = super().rollout(x, skip)
            return super().rollout(x, steps - skip)
        if self.trial == "bf16":  # states and weights in bfloat16 through the fast path (autocast breaks its
            return super().rollout(x.bfloat16(), steps).float()  # index_copy_); gradients back in float32
        return super().rollout(x, steps)


_cell_weights = fast.cell_weights


def _bf16_cell_weights(model, angle: float = 0.0) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
    return tuple(w.bfloat16() for w in _cell_weights(model, angle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="a drawing of scripts/make_examples.py")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--iterations", type=int, help="a fixed count instead of the time budget (the budget recipe's "
                                                       "batch, pool and damaged share; lr drop at 60 %%): a loaded "
                                                       "machine then trains as much as a quiet one")
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--padding", type=int, default=16)
    parser.add_argument("--init", help="starter (models/starter.safetensors) or a model file")
    parser.add_argument("--damage", default="circle", choices=["circle", "strokes"])
    parser.add_argument("--trial", default="", help="bf16 or truncate:K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="")
    parser.add_argument("--save", type=Path, help="write the trained model file here")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "starter")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    init_path = ROOT / "models" / "starter.safetensors" if args.init == "starter" else args.init
    init = modelfile.load(Path(init_path)) if init_path else None
    options = {"target_size": args.size, "padding": args.padding, "experiment": "regenerating", "seed": args.seed,
               "minutes": args.minutes, "iterations": CAP, "damage": args.damage, "name": args.name or args.target,
               **({"start_from": "example-starter" if args.init == "starter" else str(args.init)} if init else {})}
    if args.iterations:
        options.pop("minutes")
        options.update(iterations=args.iterations, lr_decay_at=round(0.6 * args.iterations), batch_size=4,
                       pool_size=128, damage_count=1)
    spec = JobSpec.from_options(options)
    with tempfile.TemporaryDirectory() as drawn:  # its own copy: two runs side by side would share the file
        target = load_target(draw(args.target, Path(drawn)), spec.target)
    speed = calibrate()
    TrialTrainer.trial = args.trial
    if args.trial == "bf16":
        fast.cell_weights = _bf16_cell_weights
    if init is not None:
        spec.check_start(init.info)
    trainer = TrialTrainer(target, spec.train, target_size=spec.target.size, padding=spec.target.padding,
                           speed=speed, init=init, name=spec.name, start_from=spec.start_from)
    start = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - start
    fast.cell_weights = _cell_weights  # measured in float32, as the card and the stream run it
    grown, at_1000 = measure(trainer, spec.train.max_steps, args.runs)
    if args.save:
        modelfile.save(result.model_file, args.save)
    budget = f"{args.iterations} it" if args.iterations else f"{args.minutes:g} min"
    row = (f"| {args.target} | {args.size}/{args.padding} | {args.init or 'random'} | {args.trial or '-'} | "
           f"{args.damage} | {budget} | {seconds:.0f} | {result.iteration} | {grown:.1f} | {at_1000:.1f} | "
           f"{load_start:.1f} / {os.getloadavg()[0]:.1f} | seed {args.seed} |")
    print(row, flush=True)
    with contextlib.suppress(OSError), (args.out / "runs.md").open("a") as f:
        f.write(row + "\n")


if __name__ == "__main__":
    main()
