"""The Watch view in a real browser against the real stream: growth, erasing and regrowth, controls."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.frontend.pages import ca_step, open_app, painted, screenshot, set_range, wait_painted

# A band across the middle of the grid: the lizard's body always covers it once grown.
BAND = (0.40, 0.46, 0.60, 0.54)


@pytest.fixture
def example_id(stack) -> str:
    if stack.example_id is None:
        pytest.skip("../shared/reference/distill-webgl-models is absent: no regenerating model to watch")
    return stack.example_id


def test_watch_grows_erases_and_regrows(page, stack, example_id):
    open_app(page, f"watch/{example_id}")
    expect(page.locator("#model-select")).to_have_value(example_id)
    expect(page.locator("#connection")).to_have_text("live")
    # It starts from the seed (one cell) and grows: the painted share of the canvas rises.
    page.wait_for_function("() => Number(document.getElementById('ca-step').textContent) > 0")
    early = painted(page)
    assert early < 0.05, f"expected a nearly empty grid near the seed, got {early:.3f} painted"
    set_range(page, "#steps-per-frame", 4)  # the `speed` command: grow up faster
    grown = wait_painted(page, "p > 0.10")
    assert grown > early + 0.08
    expect(page.locator("#model-info")).to_contain_text("72×72 cells")
    page.wait_for_function("() => Number(document.getElementById('measured-fps').textContent) >= 5")

    # A mature pattern (the hidden channels settle after ~100 steps) regrows reliably. Then slow
    # down so the erased hole stays on screen for a while, and drag across the middle.
    page.wait_for_function("() => Number(document.getElementById('ca-step').textContent) > 200")
    screenshot(page, "watch")
    set_range(page, "#steps-per-frame", 1)
    set_range(page, "#fps", 8)
    set_range(page, "#eraser", 8)
    before = wait_painted(page, "p > 0.9", box=BAND)
    box = page.locator("#stream-canvas").bounding_box()
    y = box["y"] + box["height"] * 0.5
    page.mouse.move(box["x"] + box["width"] * 0.40, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.60, y, steps=5)
    page.mouse.up()
    cleared = wait_painted(page, "p < 0.1", box=BAND, timeout=5_000)
    assert cleared < before - 0.8
    screenshot(page, "watch-erased")
    regrown = wait_painted(page, "p > 0.8", box=BAND, timeout=30_000)
    assert regrown > cleared + 0.7


def test_watch_keyboard_controls(page, stack, example_id):
    """Space pauses (the CA step stops), S steps once, R resets to the seed; all from the keyboard."""
    open_app(page, f"watch/{example_id}")
    page.wait_for_function("() => Number(document.getElementById('ca-step').textContent) > 30")
    page.focus("#stream-canvas")
    page.keyboard.press("Space")
    expect(page.locator("#play-pause")).to_have_text("Play")
    expect(page.locator("#play-pause")).to_have_attribute("aria-pressed", "true")
    page.wait_for_timeout(300)  # frames already on the way
    paused_at = ca_step(page)
    page.wait_for_timeout(700)
    assert ca_step(page) == paused_at, "the CA kept stepping while paused"
    page.keyboard.press("s")
    page.wait_for_function(f"() => Number(document.getElementById('ca-step').textContent) === {paused_at + 1}")
    page.keyboard.press("r")
    wait_painted(page, "p < 0.01", timeout=5_000)  # back to a single seed cell
    # Double-click plants a second seed in the top-left quarter; once playing, it grows there too.
    box = page.locator("#stream-canvas").bounding_box()
    page.mouse.dblclick(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.25)
    page.keyboard.press("Space")
    expect(page.locator("#play-pause")).to_have_text("Pause")
    wait_painted(page, "p > 0.3", box=(0.2, 0.2, 0.3, 0.3), timeout=20_000)


SET_HIDDEN_JS = """(hidden) => {
  Object.defineProperty(document, 'hidden', { value: hidden, configurable: true });
  document.dispatchEvent(new Event('visibilitychange'));
}"""


def test_hidden_tab_pauses_the_stream(page, stack, example_id):
    """No CA steps are computed for a tab nobody looks at; it plays on when it is shown again."""
    open_app(page, f"watch/{example_id}")
    page.wait_for_function("() => Number(document.getElementById('ca-step').textContent) > 5")
    page.evaluate(SET_HIDDEN_JS, True)
    expect(page.locator("#play-pause")).to_have_text("Play")  # the server confirmed the pause
    page.wait_for_timeout(300)
    hidden_at = ca_step(page)
    page.wait_for_timeout(700)
    assert ca_step(page) == hidden_at
    page.evaluate(SET_HIDDEN_JS, False)
    expect(page.locator("#play-pause")).to_have_text("Pause")
    page.wait_for_function(f"() => Number(document.getElementById('ca-step').textContent) > {hidden_at + 5}")


def test_stream_address_comes_from_the_api_config(page, stack):
    """Same host as the page on the configured port by default; a public URL (reverse proxy) wins."""
    open_app(page, "train")
    config = page.evaluate("() => fetch('/api/config').then((r) => r.json())")
    assert config["stream_port"] == stack.stream_port
    addresses = page.evaluate("""async (config) => {
      const { streamBase } = await import('/js/stream.js');
      return [streamBase(config),
              streamBase({ ...config, stream_url: 'https://nca.example.org/stream/' }),
              streamBase({ ...config, stream_url: '/stream' })];
    }""", config)
    assert addresses == [f"ws://127.0.0.1:{stack.stream_port}", "wss://nca.example.org/stream",
                         f"ws://127.0.0.1:{stack.api_url.rsplit(':', 1)[1]}/stream"]


def test_watch_reconnects_when_the_stream_restarts(page, stack, example_id):
    open_app(page, f"watch/{example_id}")
    page.wait_for_function("() => Number(document.getElementById('ca-step').textContent) > 30")
    stack.stream.stop()
    try:
        expect(page.locator("#connection")).to_have_text("reconnecting…")
        expect(page.locator("#watch-status")).to_contain_text("reconnecting in")
        last_step = ca_step(page)
    finally:
        stack.stream.start()
    expect(page.locator("#connection")).to_have_text("live", timeout=30_000)
    # A fresh session plays from the seed again, and keeps going.
    page.wait_for_function(f"() => Number(document.getElementById('ca-step').textContent) < {last_step}")
    page.wait_for_function("() => Number(document.getElementById('ca-step').textContent) > 10")


def test_leaving_watch_while_models_load_opens_no_stream(page, stack, example_id):
    """A model list that arrives after the user left the Watch view must not start a stream for the
    hidden canvas (it would run, unseen, until the view is shown and hidden again)."""
    held = []

    def hold_first(route) -> None:  # hold the first answer until we have left the view
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route("**/api/models", hold_first)
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    open_app(page, f"watch/{example_id}")
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the Watch view did not ask for the model list"
    page.evaluate("() => { location.hash = '#jobs'; }")
    expect(page.locator("#view-watch")).to_be_hidden()
    held[0].continue_()
    expect(page.locator("#model-select")).to_have_value(example_id)  # the list did arrive
    page.wait_for_timeout(700)
    assert sockets == [], "a stream was opened for the hidden Watch view"
    expect(page.locator("#connection")).to_have_text("not connected")
    page.evaluate(f"() => {{ location.hash = '#watch/{example_id}'; }}")  # and coming back still works
    expect(page.locator("#connection")).to_have_text("live")


def test_stream_opened_in_a_hidden_tab_starts_paused(page, stack, example_id):
    """A Watch view opened in a background tab computes nothing until it is shown, then plays."""
    open_app(page, "train")
    page.evaluate(SET_HIDDEN_JS, True)
    page.evaluate(f"() => {{ location.hash = '#watch/{example_id}'; }}")
    expect(page.locator("#connection")).to_have_text("live")
    expect(page.locator("#play-pause")).to_have_text("Play")  # the server confirmed the pause
    page.wait_for_timeout(300)
    hidden_at = ca_step(page)
    page.wait_for_timeout(700)
    assert ca_step(page) == hidden_at, "the stream kept stepping for a hidden tab"
    page.evaluate(SET_HIDDEN_JS, False)
    expect(page.locator("#play-pause")).to_have_text("Pause")
    page.wait_for_function(f"() => Number(document.getElementById('ca-step').textContent) > {hidden_at + 5}")
