"""`nca player|video|card` as a user runs them (export-distill: tests/nca/test_distill_export.py)."""

import json

import pytest
from PIL import Image

from backend.exports.cli import main
from backend.exports.video import decode_frames
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HEART = str(REPO_ROOT / "models" / "heart.safetensors")


def test_player_writes_one_html_file(tmp_path, capsys):
    out = tmp_path / "heart.html"
    assert main(["player", HEART, "--out", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "window.ncaPlayer" in page and "heart" in page
    assert "open it in a browser" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["gif", "webp", "mp4"])
def test_video_writes_the_format_its_name_says(tmp_path, fmt):
    out = tmp_path / f"heart.{fmt}"
    assert main(["video", HEART, "--steps", "20", "--scale", "2", "--out", str(out)]) == 0
    frames = decode_frames(out.read_bytes(), fmt)
    assert len(frames) == 21 and frames[0].shape == (72, 72, 3)


def test_video_refuses_other_names_and_absurd_sizes(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"\.gif, \.webp, \.mp4"):
        main(["video", HEART, "--steps", "20", "--out", str(tmp_path / "heart.avi")])
    assert main(["video", HEART, "--steps", "5000", "--out", str(tmp_path / "heart.gif")]) == 2
    assert "steps must be between 1 and 2000" in capsys.readouterr().err


def test_card_prints_writes_and_draws(tmp_path, capsys):
    out, sheet = tmp_path / "card.json", tmp_path / "card.png"
    assert main(["card", HEART, "--out", str(out), "--sheet", str(sheet)]) == 0
    text = capsys.readouterr().out
    assert "REGROWS" in text and "centre cut" in text and "8-bit export" in text
    card = json.loads(out.read_text())
    assert card["verdict"] == "regrows" and len(card["model"]["sha256"]) == 64
    with Image.open(sheet) as img:
        assert img.width > 7 * 144 and img.height > 144


def test_the_cores_command_line_points_to_the_exports(capsys):
    """`python -m backend.nca` is the core's: it names where player, video and card went instead of failing."""
    from backend.nca.cli import main as core_main

    assert core_main(["player", HEART, "--out", "x.html"]) == 2
    assert "python -m backend.exports player" in capsys.readouterr().err


def test_the_core_reads_no_file_outside_itself():
    """backend/nca names no folder of the web app and never climbs out of its own directory."""
    for path in (REPO_ROOT / "backend" / "nca").glob("*.py"):
        source = path.read_text()
        assert "frontend/" not in source, path
        assert ".parents[" not in source and "parent.parent" not in source, path
