"""Everything the service can do, on the page (issue 23), in real chromium against the real stack: the model
card on a finished job's card and in Watch, every export from the "Take it with you" menu (the player
downloaded and opened from file://, the MP4 played in a <video>, GIF and WebP decoded, the Distill JSON with
its quantisation note), the Watch list's groups and the replay loop of a model still training.

Screenshots (artifacts/screenshots/take-*.png): the job card and Watch with the card and the menu, desktop
and phone.
"""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tests.frontend.pages import SCREENSHOTS, act_as, ca_step, open_app, screenshot, set_range, trained_job
from tests.stream.jobs import HEART, TrainingJob, as_checkpoint

ALL_LOADED_JS = """(selector) => {
  const images = [...document.querySelectorAll(selector)];
  return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def trained_owner(stack) -> str:
    """The owner of `trained` (jobs are private): each test's browser acts as it."""
    return httpx.get(f"{stack.api_url}/api/me", timeout=30).json()["token"]


@pytest.fixture(scope="module")
def trained(stack, trained_owner) -> str:
    """A finished job trained by the stack's worker: far too short to regrow, as it was asked to."""
    return trained_job(stack, trained_owner, timeout=180, experiment="regenerating", batch_size=4, iterations=40,
                       checkpoint_every=20, name="short square")


def test_a_finished_jobs_card_shows_its_verdict_its_pictures_and_what_to_do(page, stack, trained, trained_owner):
    act_as(page, stack, trained_owner)
    card_json = stack.http.get(f"{stack.api_url}/api/models/{trained}/card", timeout=60).json()
    assert card_json["goal"] == "regrows" and card_json["meets_goal"] is False  # 40 iterations do not regrow

    open_app(page, "jobs")
    card = page.locator(f'.job[data-job-id="{trained}"]')
    card.scroll_into_view_if_needed()  # a card is asked for once it is scrolled to
    verdict = card.locator(".model-card .verdict")
    expect(verdict).to_contain_text("(trained to regrow).", timeout=60_000)
    expect(verdict).to_have_attribute("data-meets", "false")
    expected = {"grows": "Grows, but does not yet hold its shape", "fails": "Does not grow its pattern yet",
                "persists": "Grows and holds its shape, but does not yet repair"}[card_json["verdict"]]
    expect(verdict).to_contain_text(expected)
    expect(card.locator(".model-card .suggestion")).to_contain_text("Next: train it longer")

    gallery = card.locator(".card-gallery img")
    expect(gallery).to_have_count(0)  # on demand: nothing until asked
    card.locator(".card-pictures summary").click()
    expect(gallery).to_have_count(9)
    page.wait_for_function(ALL_LOADED_JS, arg=f'.job[data-job-id="{trained}"] .card-gallery img')
    growth = card.locator('.card-gallery figure[data-check="growth"]')
    expect(growth).to_contain_text(f"grown, {card_json['checks']['growth']['steps']} steps")
    assert growth.locator("img").get_attribute("src") == card_json["checks"]["growth"]["image"]

    # The strip's pictures are all there the moment the strip is (loaded off screen, shown together).
    assert page.evaluate(ALL_LOADED_JS, f'.job[data-job-id="{trained}"] .strip-item img')

    card.locator(".takeaway summary").click()
    card.scroll_into_view_if_needed()
    screenshot(page, "take-job-card")
    card.screenshot(path=str(SCREENSHOTS / "take-job-card-only.png"))  # the README's picture


def test_gif_and_webp_from_the_job_card_decode(page, stack, trained, trained_owner):
    act_as(page, stack, trained_owner)
    open_app(page, "jobs")
    card = page.locator(f'.job[data-job-id="{trained}"]')
    card.locator(".takeaway summary").click()
    for fmt in ("gif", "webp"):
        with page.expect_download() as download:
            card.locator(f'[data-export="{fmt}"]').click()
            expect(card.locator(".takeaway-progress")).to_be_visible()  # while the server renders
        assert download.value.suggested_filename.endswith(f".{fmt}")
        shown = card.locator(".takeaway-preview img")
        expect(shown).to_be_visible()
        size = shown.evaluate("async (img) => { await img.decode(); return [img.naturalWidth, img.naturalHeight]; }")
        assert size[0] > 16 and size[1] > 16, size  # the grid (12 cells) at 4 pixels per cell
        expect(card.locator(".takeaway-progress")).to_be_hidden()


def test_the_player_from_watch_opens_in_a_tab_and_grows_from_white_opened_from_disk(page, stack, browser, tmp_path):
    if stack.example_id is None:
        pytest.skip("needs the Distill example (../shared is absent)")
    open_app(page, f"watch/{stack.example_id}")
    menu = page.locator("#watch-takeaway")
    menu.locator("summary").click()

    with page.expect_popup() as popup:
        menu.locator('[data-export="player-open"]').click()
    tab = popup.value
    tab.wait_for_selector("html[data-ready=true]")
    assert tab.evaluate("() => window.ncaPlayer.width") == 72
    tab.close()

    with page.expect_download() as download:
        menu.locator('[data-export="player"]').click()
    path = tmp_path / "player.html"
    download.value.save_as(path)
    context = browser.new_context(viewport={"width": 720, "height": 900})
    try:
        player = context.new_page()
        player.goto(path.as_uri())
        player.wait_for_selector("html[data-ready=true]")
        player.evaluate("() => { window.ncaPlayer.pause(); window.ncaPlayer.reset(7); }")
        white = player.evaluate("() => window.ncaPlayer.stats()")
        assert white["alive"] < 0.001 and min(white["rgb"]) > 0.99  # one live cell on white
        player.evaluate("() => window.ncaPlayer.step(80)")
        grown = player.evaluate("() => window.ncaPlayer.stats()")
        assert grown["alive"] > 0.05 and min(grown["rgb"]) < 0.97, grown  # the lizard has grown
    finally:
        context.close()


def test_the_mp4_plays_in_a_video_element_and_the_distill_json_says_what_8_bits_did(page, stack):
    if stack.example_id is None:
        pytest.skip("needs the Distill example (../shared is absent)")
    open_app(page, f"watch/{stack.example_id}")
    menu = page.locator("#watch-takeaway")
    menu.locator("summary").click()

    with page.expect_download(timeout=120_000) as download:
        menu.locator('[data-export="mp4"]').click()
        expect(menu.locator(".takeaway-progress")).to_contain_text("The server renders the MP4")
    assert download.value.suggested_filename.endswith(".mp4")
    video = menu.locator(".takeaway-preview video")
    video.evaluate("(v) => new Promise((resolve, reject) => { if (v.readyState >= 2) resolve(); "
                   "v.onloadeddata = resolve; v.onerror = () => reject(new Error('no decode: ' + v.error?.code)); })")
    duration, width, height = video.evaluate("(v) => [v.duration, v.videoWidth, v.videoHeight]")
    assert duration > 1 and (width, height) == (288, 288), (duration, width, height)  # 72 cells x 4 pixels
    menu.screenshot(path=str(SCREENSHOTS / "take-watch-menu-mp4.png"))

    with page.expect_download() as download:
        menu.locator('[data-export="distill"]').click()
    assert download.value.suggested_filename.startswith("regenerating_")  # the experiment first, as the API names it
    note = menu.locator(".takeaway-note")
    expect(note).to_contain_text("In 8 bits it grows to")
    expect(note).to_contain_text("dB as trained")
    expect(note).to_contain_text("save this file as webgl_models8/ex3_🦎.json")
    expect(note).to_contain_text("pick the lizard with experiment 3")
    menu.screenshot(path=str(SCREENSHOTS / "take-watch-menu-distill.png"))


def test_watch_shows_the_card_and_the_menu_and_groups_the_models(page, stack, trained, trained_owner):
    act_as(page, stack, trained_owner)
    job = TrainingJob(stack.redis_url, name="still training", total=2000, owner_token=stack.owner_token)
    try:
        job.checkpoint(as_checkpoint(HEART, 500, 0.01))
        open_app(page, f"watch/{trained}")
        groups = page.eval_on_selector_all("#model-select optgroup", "(gs) => gs.map((g) => [g.label, "
                                           "[...g.children].map((o) => o.value)])")
        by_label = dict(groups)
        assert trained in by_label["Finished jobs"] and job.id in by_label["Training now"], groups
        if stack.example_id:
            assert stack.example_id in by_label["Examples"]
        # The card follows the picture's panel (it loads when scrolled into view): no gap as tall as the sidebar.
        gap = page.evaluate("() => document.querySelector('.watch-extras').getBoundingClientRect().top - document"
                            ".querySelector('.watch-layout').firstElementChild.getBoundingClientRect().bottom")
        assert gap < 40, gap
        expect(page.locator("#watch-card .verdict")).to_contain_text("(trained to regrow).", timeout=60_000)
        expect(page.locator("#play-mode")).to_contain_text("Plays on from the seed")
        expect(page.locator("#loop")).to_be_hidden()  # a finished model: nothing to replay
        page.locator("#watch-card .card-pictures summary").click()
        page.locator("#watch-takeaway summary").click()
        page.wait_for_function(ALL_LOADED_JS, arg="#watch-card .card-gallery img")
        screenshot(page, "take-watch")

        # A checkpoint picked in the timeline: its own card and exports.
        page.locator("#timeline").evaluate("(el) => { el.value = 0; el.dispatchEvent(new Event('input')); }")
        expect(page).to_have_url(f"{stack.api_url}/#watch/{trained}%4020")
        menu = page.locator("#watch-takeaway")
        expect(menu.locator('[data-export="model"]')).to_have_attribute("href", f"/api/models/{trained}%4020/file")
        expect(menu.locator('[data-export="player-open"]')).to_have_attribute(
            "href", f"/api/models/{trained}%4020/player.html?inline=true")
        expect(page.locator("#watch-card .verdict")).to_contain_text("(trained to regrow).", timeout=60_000)
        with page.expect_download() as download:
            menu.locator('[data-export="gif"]').click()
        assert download.value.suggested_filename.endswith("-20.gif")
        if stack.example_id:  # an example shows its card too: the README's picture
            page.select_option("#model-select", stack.example_id)
            expect(page.locator("#watch-card .verdict")).to_contain_text("trained", timeout=60_000)
            page.locator("#watch-card .card-pictures summary").click()
            page.wait_for_function(ALL_LOADED_JS, arg="#watch-card .card-gallery img")
            expect(page.locator("#watch-takeaway details")).to_have_attribute("open", "")  # the menu stays open
            set_range(page, "#steps-per-frame", 8)
            page.wait_for_function("() => Number(document.getElementById('ca-step').textContent) > 150")
            set_range(page, "#steps-per-frame", 1)
            screenshot(page, "take-watch-example")
    finally:
        job.close()


def test_watch_replays_a_training_model_and_plays_on_with_the_switch_off(page, stack):
    job = TrainingJob(stack.redis_url, name="looping", total=2000, owner_token=stack.owner_token)
    try:
        job.checkpoint(as_checkpoint(HEART, 500, 0.01))
        loop = 3 * 48  # stream_loop_multiple's default times the heart's max_steps
        open_app(page, f"watch/{job.id}")
        expect(page.locator("#play-mode")).to_contain_text(f"back to the seed every {loop} CA steps")
        expect(page.locator("#watch-card .verdict")).to_have_text("comes when the training ends.")
        set_range(page, "#steps-per-frame", 4)
        # Every step the page shows, until it goes back: it is near 0, and it was near the loop length.
        page.evaluate("""() => { window.steps = []; new MutationObserver(() => window.steps.push(
            Number(document.getElementById('ca-step').textContent))).observe(document.getElementById('ca-step'),
            {childList: true, characterData: true, subtree: true}); }""")
        page.wait_for_function("() => window.steps.some((s, i) => i > 0 && s < window.steps[i - 1])", timeout=30_000)
        steps = page.evaluate("() => window.steps")
        back = next(i for i in range(1, len(steps)) if steps[i] < steps[i - 1])
        assert steps[back] <= 4 and loop - 8 <= steps[back - 1] <= loop + 4, steps
        assert max(steps) <= loop + 4

        page.locator("#loop").uncheck()
        expect(page.locator("#play-mode")).to_contain_text("the step count keeps going")
        page.wait_for_function(f"() => Number(document.getElementById('ca-step').textContent) > {loop + 60}",
                               timeout=30_000)
        assert ca_step(page) > loop
    finally:
        job.close()


def test_phone_screenshots_of_the_job_card_and_watch(phone, stack, trained, trained_owner):
    act_as(phone, stack, trained_owner)
    open_app(phone, "jobs")
    card = phone.locator(f'.job[data-job-id="{trained}"]')
    card.locator(".model-card").scroll_into_view_if_needed()
    expect(card.locator(".model-card .verdict")).to_contain_text("trained to regrow", timeout=60_000)
    card.locator(".card-pictures summary").click()
    card.locator(".takeaway summary").click()
    phone.wait_for_function(ALL_LOADED_JS, arg=f'.job[data-job-id="{trained}"] .card-gallery img')
    card.scroll_into_view_if_needed()
    screenshot(phone, "take-job-card-phone")

    open_app(phone, f"watch/{trained}")
    phone.locator("#watch-card").scroll_into_view_if_needed()  # after the controls on a phone
    expect(phone.locator("#watch-card .verdict")).to_contain_text("trained to regrow", timeout=60_000)
    phone.locator("#watch-takeaway summary").click()
    screenshot(phone, "take-watch-phone")
