"""The evidence behind the model card's thresholds: every card number for known good and bad models.

    .venv/bin/python scripts/card_evidence.py                      # reference models, examples, broken models
    .venv/bin/python scripts/card_evidence.py extra1.safetensors   # and these model files too
    .venv/bin/python scripts/card_evidence.py --only regenerating_lizard --only heart
    .venv/bin/python scripts/card_evidence.py --random-sweep           # the growth check on 36 random rules

Known good: the Distill article's 31 models (../shared/reference/distill-webgl-models; `growing_*`
should grow and may fail to persist, `persistent_*` persist, `regenerating_*` regrow) and the
shipped examples. Known bad: an untrained model (does nothing), random weights (noise or an
explosion). Prints one row per model (markdown); docs/model-format.md#model-card holds the table
and the thresholds chosen from it. One torch thread; about 5-10 s per model on the 2-core VM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.exports.card import model_card  # noqa: E402
from backend.nca import modelfile  # noqa: E402
from backend.nca.distill import import_distill  # noqa: E402
from backend.nca.model import NCA  # noqa: E402
from backend.nca.modelfile import ModelFile, ModelInfo  # noqa: E402

DISTILL_MODELS = ROOT.parent / "shared" / "reference" / "distill-webgl-models"


def random_model(seed: int, scale: float) -> ModelFile:
    """Random weights in both layers (the last one is not zero, unlike a fresh model): broken on purpose."""
    torch.manual_seed(seed)
    model = NCA()
    with torch.no_grad():
        model.hidden_to_update.weight.normal_(0.0, scale)
        model.hidden_to_update.bias.normal_(0.0, scale)
    return ModelFile(model, ModelInfo(grid_height=72, grid_width=72, name=f"random-{seed}-{scale:g}"))


def models(extra: list[Path]) -> list[tuple[str, ModelFile]]:
    out = []
    for path in sorted(DISTILL_MODELS.glob("*.json")) if DISTILL_MODELS.is_dir() else []:
        out.append((path.stem, import_distill(path)))
    for path in sorted((ROOT / "models").glob("*.safetensors")) + extra:
        out.append((path.stem, modelfile.load(path)))
    out.append(("untrained", ModelFile(NCA(), ModelInfo(grid_height=72, grid_width=72, name="untrained"))))
    for seed, scale in ((0, 0.02), (1, 0.1)):
        mf = random_model(seed, scale)
        out.append((mf.info.name, mf))
    return out


COLUMNS = ("model", "experiment", "ref", "verdict", "blank dB", "growth dB", "gain dB", "alive", "ref alive",
           "alive / at 3/4",
           "kept 1000", "kept 2000", "alive 2000/grown", "centre cut kept/regrown/uncut", "recovered",
           "edge cut kept/regrown/uncut", "recovered", "kept 45", "kept 90",
           "float dB", "8-bit dB", "s")


def row(name: str, mf: ModelFile) -> list[str]:
    from backend.nca import evaluate

    card = model_card(mf)
    c = card["checks"]
    ref = evaluate.reference(mf, card["growth_steps"])
    q = card["quantization"]
    mark = {True: "", False: " x"}

    def cell(check: str) -> str:
        return f"{c[check]['score']:.2f}{mark[c[check]['passed']]}"

    def cut(check: str) -> str:
        e = c[check]["extra"]
        return f"{e['kept_after_cut']:.2f} / {e['kept_regrown']:.2f} / {e['kept_uncut']:.2f}"

    return [name, mf.info.experiment or "-", card["reference"], card["verdict"], f"{card['blank_psnr']:.1f}",
            f"{c['growth']['psnr']:.1f}", cell("growth"), f"{c['growth']['alive']:.3f}", f"{ref.alive:.3f}",
            f"{c['growth']['alive'] / max(c['growth']['extra']['alive_early'], 1e-9):.2f}",
            cell("steps_1000"), cell("steps_2000"), f"{c['steps_2000']['alive'] / max(c['growth']['alive'], 1e-9):.2f}",
            cut("cut_centre"), cell("cut_centre"), cut("cut_edge"), cell("cut_edge"),
            cell("angle_45"), cell("angle_90"),
            f"{q['psnr_float']:.1f}", f"{q['psnr_8bit']:.1f}{'' if q['grows_8bit'] else ' x'}",
            f"{card['seconds']:.1f}"]


def random_sweep() -> None:
    """The growth check alone on random rules: 2 grids x 6 weight scales x 3 seeds. None should grow."""
    from backend.nca import evaluate

    print("| grid | last-layer scale | seed | gain dB | alive | alive / at 3/4 | grows |")
    print("|---|---|---|---|---|---|---|")
    for grid in (36, 72):
        for scale in (0.005, 0.01, 0.02, 0.03, 0.05, 0.1):
            for seed in range(3):
                mf = random_model(seed, scale)
                mf.info.grid_height = mf.info.grid_width = grid
                ref = evaluate.reference(mf, evaluate.DEFAULT_GROWTH_STEPS)
                g = evaluate.growth(mf.model, mf, ref, evaluate.DEFAULT_GROWTH_STEPS,
                                    generator=torch.Generator().manual_seed(evaluate.SEED))
                gain = evaluate.psnr_of(g.error) - evaluate.psnr_of(evaluate.blank_mse(ref))
                print(f"| {grid} | {scale:g} | {seed} | {gain:.1f} | {g.alive:.3f} | "
                      f"{g.alive / max(g.alive_early, 1e-9):.2f} | {evaluate.grows_enough(g, ref)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extra", nargs="*", type=Path, help="more model files to evaluate")
    parser.add_argument("--only", action="append", help="only the models whose name starts so (repeatable)")
    parser.add_argument("--random-sweep", action="store_true", help="only the growth check on random rules")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.random_sweep:
        random_sweep()
        return
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    start = time.perf_counter()
    for name, mf in models(args.extra):
        if args.only and not any(name.startswith(prefix) for prefix in args.only):
            continue
        print("| " + " | ".join(row(name, mf)) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s in all; scores marked x did not pass", file=sys.stderr)


if __name__ == "__main__":
    main()
