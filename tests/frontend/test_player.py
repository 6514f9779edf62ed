"""The one-file web player in real chromium, opened from file://: WebGL2 and the plain JavaScript path.

It grows a shipped model from the seed, is erased and regrows, and its statistics after N steps match
the Python core's (alive fraction and mean colour over several runs: the random fire masks differ,
so single runs cannot be compared cell by cell; with fire rate 1 they can, exactly). Debian's headless
chromium runs WebGL2 on SwiftShader; without its software rasterizer it has none, and the player falls
back by itself. Screenshots go to artifacts/screenshots/player-*.png.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch

from backend.exports.player import player_html
from backend.nca import modelfile
from backend.nca.evaluate import alive_fraction, pictures
from backend.nca.fast import grow
from backend.nca.model import make_seed
from tests.conftest import wait_for
from tests.frontend.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.frontend.pages import SCREENSHOTS
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEART = REPO_ROOT / "models" / "heart.safetensors"
STEPS = 60  # grown (the heart is trained for 32-47 steps) and settled
RUNS = 6
XSS_NAME = "</script><script>alert(1)</script>"
# Tolerances for the mean over RUNS runs; the core's run-to-run spread is about 0.005 (alive) and
# 0.003 (mean colour) at STEPS, so these are several standard errors wide but far below the
# differences a wrong rule makes (a mirrored Sobel or missing mask changes them by 0.05 or more).
ALIVE_TOLERANCE = 0.02
COLOUR_TOLERANCE = 0.015

CANVAS_PIXELS_JS = """() => {
  const c = document.getElementById('ca');
  const o = document.createElement('canvas');
  o.width = c.width; o.height = c.height;
  const ctx = o.getContext('2d');
  ctx.drawImage(c, 0, 0);
  const d = ctx.getImageData(0, 0, o.width, o.height).data;
  let painted = 0; const rgb = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) painted++;
    for (let k = 0; k < 3; k++) rgb[k] += d[i + k] / 255;
  }
  const n = d.length / 4;
  return {painted: painted / n, rgb: rgb.map((v) => v / n), width: o.width, height: o.height};
}"""


@pytest.fixture(scope="module")
def player_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("player") / "heart.html"
    path.write_text(player_html(modelfile.load(HEART)))
    return path


@pytest.fixture(scope="module")
def core() -> dict[str, float]:
    """The core's mean alive fraction and mean colour (RGB on white) after STEPS steps, over 4 * RUNS runs."""
    model = modelfile.load(HEART).model
    x = grow(model, make_seed(36, 36, batch=4 * RUNS), STEPS, generator=torch.Generator().manual_seed(0))
    rgb = pictures(x).mean(dim=(2, 3))
    return {"alive": alive_fraction(x).mean().item(), **{c: rgb[:, i].mean().item() for i, c in enumerate("rgb")}}


def open_player(browser, path: Path, query: str = ""):
    context = browser.new_context(viewport={"width": 720, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.on("request", lambda r: None if r.url.startswith("file://") else problems.append(f"request: {r.url}"))
    page.goto(path.as_uri() + query)
    page.wait_for_selector("html[data-ready=true]", timeout=30_000)
    page.evaluate("ncaPlayer.pause()")
    return context, page, problems


@pytest.mark.parametrize("backend", ["webgl2", "js"])
def test_the_player_grows_erases_and_regrows_like_the_core(browser, player_file, core, backend):
    context, page, problems = open_player(browser, player_file, "?backend=js" if backend == "js" else "")
    try:
        used = page.evaluate("document.documentElement.dataset.backend")
        if used != backend:
            reason = page.evaluate("document.documentElement.dataset.backendReason")
            pytest.skip(f"this chromium cannot run the {backend} path: {reason}")
        assert page.locator("#backend").inner_text().startswith("WebGL2" if backend == "webgl2" else "plain")

        # From white: the seed is the only painted cell.
        page.evaluate("ncaPlayer.reset(1)")
        start = page.evaluate(CANVAS_PIXELS_JS)
        assert (start["width"], start["height"]) == (36, 36) and start["painted"] <= 1 / 36**2

        runs = []
        for seed in range(1, RUNS + 1):
            page.evaluate(f"ncaPlayer.reset({seed}); ncaPlayer.step({STEPS})")
            runs.append({**page.evaluate("ncaPlayer.stats()"), "canvas": page.evaluate(CANVAS_PIXELS_JS)})
        alive = statistics.mean(r["alive"] for r in runs)
        assert abs(alive - core["alive"]) < ALIVE_TOLERANCE, (alive, core)
        for i, channel in enumerate("rgb"):
            on_canvas = statistics.mean(r["canvas"]["rgb"][i] for r in runs)
            assert abs(on_canvas - core[channel]) < COLOUR_TOLERANCE, (channel, on_canvas, core)
        assert abs(runs[-1]["canvas"]["painted"] - runs[-1]["alive"]) < 0.05  # what is drawn is what is alive
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"player-{backend}.png"))
        page.locator("#ca").screenshot(path=str(SCREENSHOTS / f"player-{backend}-grown.png"))

        # Erase by dragging across the middle, then regrow.
        box = page.locator("#ca").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.65, box["y"] + box["height"] * 0.5, steps=8)
        page.mouse.up()
        cut = page.evaluate("ncaPlayer.stats()")
        assert cut["alive"] < runs[-1]["alive"] * 0.8
        page.locator("#ca").screenshot(path=str(SCREENSHOTS / f"player-{backend}-erased.png"))
        page.evaluate("ncaPlayer.step(200)")
        regrown = page.evaluate("ncaPlayer.stats()")
        assert abs(regrown["alive"] - core["alive"]) < 0.05, (regrown, core)

        # Double-click plants a seed in an empty corner; play runs the CA by itself.
        page.evaluate("ncaPlayer.reset(9)")
        page.mouse.dblclick(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.1)
        assert page.evaluate("ncaPlayer.stats()")["alive"] > 1.5 / 36**2
        before = page.evaluate("ncaPlayer.steps")
        page.keyboard.press("Space")
        # Polled from here: the page's CSP forbids the eval that page.wait_for_function(string) needs.
        wait_for(lambda: page.evaluate("ncaPlayer.steps") > before + 5, timeout=30, what="the player to play")
        page.keyboard.press("Space")
        assert page.evaluate("ncaPlayer.paused")
        assert not problems, problems
    finally:
        context.close()


@pytest.mark.parametrize("backend", ["webgl2", "js"])
def test_with_every_cell_firing_the_player_computes_the_cores_states(browser, tmp_path, backend):
    """Fire rate 1 takes the randomness out: the browser's states must be the core's, channel for channel,
    on a grid that is not square and with the perception turned (Sobel orientation, rotation sign,
    zero padding, both alive masks)."""
    mf = modelfile.load(HEART)
    mf.model.fire_rate = 1.0
    mf.info.grid_height, mf.info.grid_width = 30, 40
    path = tmp_path / "deterministic.html"
    path.write_text(player_html(mf))
    context, page, problems = open_player(browser, path, "?backend=js" if backend == "js" else "")
    try:
        if page.evaluate("ncaPlayer.backend") != backend:
            pytest.skip(f"this chromium cannot run the {backend} path")
        steps, angle = 12, 30.0
        page.evaluate(f"ncaPlayer.reset(1); ncaPlayer.setAngle({angle}); ncaPlayer.step({steps})")
        got = torch.tensor(page.evaluate("ncaPlayer.state()")).view(30, 40, 16).permute(2, 0, 1)
        x = make_seed(30, 40)
        with torch.no_grad():
            for _ in range(steps):
                x = mf.model(x, angle=math.radians(angle), fire_mask=torch.ones(1, 1, 30, 40, dtype=torch.bool))
        assert (x[0, 3] > 0.1).sum() > 40  # it grew: the comparison covers a real pattern
        assert torch.equal(got[3] > 0.1, x[0, 3] > 0.1)
        assert (got - x[0]).abs().max() < 1e-3
        assert not problems, problems
    finally:
        context.close()


def test_without_webgl2_the_player_falls_back_to_javascript_by_itself(browser, player_file, core):
    """Chromium without its software rasterizer (SwiftShader) has no WebGL2 at all: the player says so
    and runs the plain JavaScript path without being asked."""
    no_webgl = browser.browser_type.launch(executable_path=str(CHROMIUM),
                                           args=[*CHROMIUM_ARGS, "--disable-software-rasterizer"])
    try:
        context, page, problems = open_player(no_webgl, player_file)
        assert page.evaluate("document.documentElement.dataset.backend") == "js"
        assert page.evaluate("document.documentElement.dataset.backendReason") == "this browser has no WebGL2"
        assert "plain JavaScript (this browser has no WebGL2)" in page.locator("#backend").inner_text()
        alive = statistics.mean(page.evaluate(f"ncaPlayer.reset({seed}); ncaPlayer.step({STEPS}); "
                                              "ncaPlayer.stats().alive") for seed in range(1, RUNS + 1))
        assert abs(alive - core["alive"]) < ALIVE_TOLERANCE and not problems, problems
        context.close()
    finally:
        no_webgl.close()


def test_a_hostile_model_name_is_shown_as_text_and_runs_no_script(browser, tmp_path):
    mf = modelfile.load(HEART)
    mf.info.name = XSS_NAME
    path = tmp_path / "xss.html"
    path.write_text(player_html(mf))
    context, page, problems = open_player(browser, path)
    try:
        assert page.locator("#name").inner_text() == XSS_NAME
        assert page.title() == f"{XSS_NAME} · Growing NCA player"
        assert page.evaluate("document.scripts.length") == 2  # the model data and the player, nothing injected
        assert page.evaluate("typeof window.alert") == "function" and not problems, problems
    finally:
        context.close()
