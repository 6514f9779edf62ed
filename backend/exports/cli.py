"""`nca player|video|card` (`python -m backend.exports ...`): the core's command line plus the product exports.

The `nca` console script is this: every command of backend.nca.cli, and the three exports, which
the core's own `python -m backend.nca` does not have (they live above it: backend/exports/__init__.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from backend.nca import cli as core_cli
from backend.nca import modelfile

from .video import DEFAULT_SCALE, DEFAULT_STEPS, FORMATS


def cmd_player(args: argparse.Namespace) -> int:
    from .player import player_html

    modelfile.write_atomic(args.out, player_html(modelfile.load(args.model)).encode())
    print(f"wrote {args.out}: open it in a browser (no network needed)")
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    from .video import render_video

    fmt = args.out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise SystemExit(f"--out must end in {', '.join('.' + f for f in FORMATS)}")
    data = render_video(modelfile.load(args.model), fmt, args.steps, args.scale)
    modelfile.write_atomic(args.out, data)
    print(f"wrote {args.out} ({len(data) // 1024} kB, {args.steps} steps: growth, a cut at step "
          f"{args.steps // 3}, regrowth)")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from .card import model_card, render_sheet, summary

    data = args.model.read_bytes()
    card = model_card(modelfile.from_bytes(data), model_sha256=hashlib.sha256(data).hexdigest())
    print(summary(card))
    if args.out:
        modelfile.write_atomic(args.out, (json.dumps(card, indent=1) + "\n").encode())
        print(f"wrote {args.out}")
    if args.sheet:
        modelfile.write_atomic(args.sheet, render_sheet(card))
        print(f"wrote {args.sheet}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = core_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    player = sub.add_parser("player", help="write a one-file web player (HTML, weights inside, no network)")
    player.add_argument("model", type=Path)
    player.add_argument("--out", type=Path, required=True, help="FILE.html")
    player.set_defaults(func=cmd_player)

    video = sub.add_parser("video", help="growth, a cut and regrowth as GIF, animated WebP or MP4 (H.264)")
    video.add_argument("model", type=Path)
    video.add_argument("--out", type=Path, required=True, help="FILE.gif, FILE.webp or FILE.mp4")
    video.add_argument("--steps", type=core_cli.positive, default=DEFAULT_STEPS, help="CA steps (at most 2000)")
    video.add_argument("--scale", type=core_cli.positive, default=DEFAULT_SCALE, help="pixels per cell")
    video.set_defaults(func=cmd_video)

    card = sub.add_parser("card", help="evaluate a model: growth, persistence, regrowth, rotation, 8-bit export")
    card.add_argument("model", type=Path)
    card.add_argument("--out", type=Path, help="write the card (JSON) here")
    card.add_argument("--sheet", type=Path, help="write its pictures with their numbers as one PNG here")
    card.set_defaults(func=cmd_card)
    return parser


def main(argv: list[str] | None = None) -> int:
    return core_cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
