"""`python -m backend.nca {train,grow,import-distill,export-distill}`.

The core without the web service. The product exports (player, video, card) are added by
backend.exports.cli, which is the `nca` console script.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import typing
from pathlib import Path
from typing import Literal

import torch

from . import modelfile
from .distill import DistillFormatError, import_distill
from .jobspec import DEFAULTS, OPTIONS, Limits, OptionField, SpecError, spec_from_request
from .model import pick_device
from .render import growth_frames, save_gif, save_strip
from .target import TargetError, process_target
from .train import PRESETS, Progress, TrainingFailed, calibrate


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """One flag per job option (backend.nca.jobspec.OPTIONS); unset ones fall back to the --preset, then to
    the defaults (the paper's). The job's name is the image's file name."""
    p.add_argument("image", type=Path, help="target image (PNG, JPEG, WebP, GIF, BMP)")
    p.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    p.add_argument("--preset", choices=list(PRESETS), default="paper",
                   help="paper: 40-cell target, 8000 iterations; preview: 24-cell target, 1500 shorter "
                        "iterations (a recognisable pattern in minutes on a CPU)")
    for opt in OPTIONS:
        if opt.part != "job" or opt.name == "start_from":  # the name is the image's
            _add_option(p, opt)
    p.add_argument("--key-background", dest="background", action="store_const", const="key",
                   help="the same as --background key (kept for old scripts)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--tensorboard", type=Path, help="write TensorBoard logs (loss, growth video) here")
    p.add_argument("--video-every", type=positive, default=500, help="iterations between growth videos")


# Older or shorter names: --size; --init MODEL for start_from (a model file, or example-<name> in ./models/).
FLAG_ALIASES = {"target_size": ["--size"], "start_from": ["--init"]}


def _add_option(p: argparse.ArgumentParser, opt: OptionField) -> None:
    """`--<name-with-dashes>`, None when not given; its bounds are checked when the spec is built."""
    flags = ["--" + opt.name.replace("_", "-"), *FLAG_ALIASES.get(opt.name, [])]
    helptext = opt.meta.help if opt.default is None else f"{opt.meta.help} (paper: {opt.default})"
    kind = opt.kinds[0]
    if kind is bool:
        p.add_argument(*flags, dest=opt.name, action="store_true", default=None, help=opt.meta.help)
    elif typing.get_origin(kind) is Literal:
        p.add_argument(*flags, dest=opt.name, choices=typing.get_args(kind), help=helptext)
    else:
        p.add_argument(*flags, dest=opt.name, type=kind, help=helptext)


def _gif_summary(tag: str, frames: list):
    """A TensorBoard image summary holding an animated GIF (what SummaryWriter.add_video makes)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    buf = io.BytesIO()
    save_gif(frames, buf, scale=2)
    h, w = frames[0].shape[:2]
    image = Summary.Image(height=h * 2, width=w * 2, colorspace=3, encoded_image_string=buf.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    given = {opt.name: value for opt in OPTIONS if (value := getattr(args, opt.name, None)) is not None}
    # A time budget plans the iterations itself: the preset's count gives way (one given with --iterations does not).
    preset = {k: v for k, v in PRESETS[args.preset].items() if not (k == "iterations" and "minutes" in given)}
    spec = spec_from_request({**preset, **given}, Limits(), args.image.stem[:80], seed=DEFAULTS["seed"])
    processed = process_target(args.image, spec.target)
    target = processed.target
    print(f"target: {target.shape[2]}x{target.shape[1]} cells, background {processed.background}, "
          f"{processed.filled:.1%} of the grid to fill", file=sys.stderr)
    if processed.warning:
        print(f"warning: {processed.warning}", file=sys.stderr)
    config = spec.train
    device = pick_device(args.device)
    resume = modelfile.load(args.out) if args.resume and args.out.exists() else None
    speed = calibrate(device) if config.minutes is not None else None  # about a second: the first plan
    init = _start_model(spec.start_from) if spec.start_from is not None and resume is None else None
    trainer = spec.trainer(target, device, resume, speed, init=init)
    writer = None
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(args.tensorboard))
        writer.add_image("target", torch.from_numpy(_rgb_target(target)), dataformats="HWC")
    bar = tqdm(total=trainer.total, initial=trainer.iteration, unit="it", dynamic_ncols=True)

    def on_progress(p: Progress) -> None:
        if bar.total != p.total:  # a time budget re-planned
            bar.total = p.total
        bar.update(1)
        bar.set_postfix(loss=f"{p.loss:.5f}", lr=f"{p.lr:.0e}")
        if writer is not None:
            writer.add_scalar("loss", p.loss, p.iteration)
            writer.add_scalar("log10_loss", math.log10(max(p.loss, 1e-12)), p.iteration)
            if p.iteration % args.video_every == 0 or p.iteration == p.total:
                frames = growth_frames(trainer.model, trainer.height, trainer.width, 300, every=3)
                writer._get_file_writer().add_summary(_gif_summary("growth", frames), p.iteration)

    def on_checkpoint(mf: modelfile.ModelFile) -> None:
        modelfile.save(mf, args.out)

    try:
        result = trainer.run(on_progress=on_progress, on_checkpoint=on_checkpoint)
    except KeyboardInterrupt:
        modelfile.save(trainer.export(), args.out)
        print(f"\ninterrupted at iteration {trainer.iteration}; saved {args.out} (resume with --resume)")
        return 130
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    took = f" in {trainer.trained_seconds / 60:.1f} min" if config.minutes is not None else ""
    print(f"{result.status} after {result.iteration} iterations{took}, loss {result.loss:.6f} on {device}; "
          f"wrote {args.out}")
    if result.finished_early:
        print(result.finished_early)
    return 0


def _start_model(name: str) -> modelfile.ModelFile:
    """--init MODEL: a model file, or a shipped example `example-<name>` (models/<name>.safetensors from here)."""
    path = Path(name)
    if not path.exists() and name.startswith("example-"):
        path = Path("models") / f"{name.removeprefix('example-')}.safetensors"
    if not path.is_file():
        raise SpecError(f"start_from: no model file {name!r} (a .safetensors file, or example-<name> from the "
                        "repository root)", "start_from")
    return modelfile.load(path)


def _rgb_target(target: torch.Tensor):
    from .render import rgb8

    return rgb8(target)  # the target is an RGBA state: render it like one


def cmd_grow(args: argparse.Namespace) -> int:
    mf = modelfile.load(args.model, map_location=pick_device(args.device))
    height = args.height or mf.info.grid_height
    width = args.width or mf.info.grid_width
    generator = torch.Generator(next(mf.model.parameters()).device).manual_seed(args.seed)
    damage = None
    if args.damage_at is not None:
        cx, cy = (width / 2, height / 2) if args.damage_center is None else args.damage_center
        radius = args.damage_radius if args.damage_radius is not None else min(height, width) / 5
        damage = (cx, cy, radius)
    frames = growth_frames(mf.model, height, width, args.steps, every=args.frame_every,
                           angle=math.radians(args.angle), damage_at=args.damage_at, damage=damage,
                           generator=generator)
    if args.out.suffix.lower() == ".gif":
        save_gif(frames, args.out, scale=args.scale, frame_ms=args.frame_ms)
    elif args.out.suffix.lower() == ".png":
        save_strip(frames, args.out, scale=args.scale)
    else:
        raise SystemExit("--out must end in .gif or .png")
    print(f"wrote {len(frames)} frames ({height}x{width} cells, {args.steps} steps) to {args.out}")
    return 0


def cmd_import_distill(args: argparse.Namespace) -> int:
    mf = import_distill(args.json)
    modelfile.save(mf, args.out)
    print(f"imported {args.json.name} ({mf.info.experiment}, {mf.model.parameter_count()} parameters) to {args.out}")
    return 0


def cmd_export_distill(args: argparse.Namespace) -> int:
    from .distill import export_distill

    layers, report = export_distill(modelfile.load(args.model))
    modelfile.write_atomic(args.out, json.dumps(layers).encode())
    if args.report:
        modelfile.write_atomic(args.report, json.dumps(report.as_dict(), indent=2).encode())
    print(f"wrote {args.out} (8-bit, {len(layers)} layers)")
    print(f"grown PSNR after {report.steps} steps ({report.reference} reference): float {report.psnr_float:.2f} dB, "
          f"8-bit {report.psnr_8bit:.2f} dB; largest weight change {report.max_weight_error:.4f}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    return 0


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _center(text: str) -> tuple[float, float]:
    x, _, y = text.partition(",")
    return float(x), float(y)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nca", description="Growing Neural Cellular Automata")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model on a target image")
    _add_train_args(train)
    train.set_defaults(func=cmd_train)

    grow = sub.add_parser("grow", help="render growth from the seed as a GIF or PNG strip")
    grow.add_argument("model", type=Path)
    grow.add_argument("--steps", type=_non_negative, required=True)
    grow.add_argument("--out", type=Path, required=True, help="FILE.gif (animation) or FILE.png (strip)")
    grow.add_argument("--frame-every", type=positive, default=1, help="steps between frames")
    grow.add_argument("--scale", type=positive, default=4, help="integer upscaling factor (nearest neighbour)")
    grow.add_argument("--frame-ms", type=positive, default=40, help="GIF frame duration")
    grow.add_argument("--angle", type=float, default=0.0, help="perception rotation in degrees")
    grow.add_argument("--height", type=positive, help="grid height (default: the model's grid)")
    grow.add_argument("--width", type=positive, help="grid width (default: the model's grid)")
    grow.add_argument("--damage-at", type=int, help="erase a circle before this step")
    grow.add_argument("--damage-center", type=_center, help="X,Y in cells (default: grid centre)")
    grow.add_argument("--damage-radius", type=float, help="in cells (default: a fifth of the grid)")
    grow.add_argument("--seed", type=int, default=0, help="random seed for the stochastic updates")
    grow.add_argument("--device", default="cpu")
    grow.set_defaults(func=cmd_grow)

    imp = sub.add_parser("import-distill", help="convert a Distill article WebGL model JSON")
    imp.add_argument("json", type=Path)
    imp.add_argument("--out", type=Path, required=True)
    imp.set_defaults(func=cmd_import_distill)

    exp = sub.add_parser("export-distill", help="write the Distill demo's 8-bit JSON; reports what quantisation does")
    exp.add_argument("model", type=Path)
    exp.add_argument("--out", type=Path, required=True,
                     help="FILE.json; <experiment>_<name>.json lets import-distill read both back. The article's "
                     "demo loads only webgl_models8/ex<1|2|3>_<emoji>.json (ex1 growing, ex2 persistent, ex3 "
                     "regenerating): save it as one of those, e.g. ex3_🦎.json")
    exp.add_argument("--report", type=Path, help="also write the quantisation report here (JSON)")
    exp.set_defaults(func=cmd_export_distill)

    return parser


EXPORTS = ("player", "video", "card")  # commands of backend.exports.cli (the `nca` script), above the core


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in EXPORTS:
        print(f"error: `{argv[0]}` is a product export: run `nca {argv[0]} ...` or "
              f"`python -m backend.exports {argv[0]} ...`", file=sys.stderr)
        return 2
    return run(build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse and run a command; a user's mistake is one line on stderr and exit status 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:  # the API's 422: here a usage error that names the flag
        flag = f" (--{exc.field.replace('_', '-')})" if exc.field else ""
        print(f"error{flag}: {exc}", file=sys.stderr)
        return 2
    except (TargetError, modelfile.ModelFileError, DistillFormatError, TrainingFailed, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: no such file", file=sys.stderr)
        return 2

