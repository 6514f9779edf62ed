"""The room pages in a real browser against the real API and stream: "Open a room" on a job card leads to
the host's page (QR code, controls); a wrong code on the join page says so; a phone joins by the link and
both show one pattern. (Two contexts through the real proxy and two replicas: tests/deploy/test_rooms_proxy.py.)
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.frontend.pages import open_app, owner_of, screenshot
from tests.stream.jobs import HEART, TrainingJob, as_checkpoint


@pytest.fixture
def job(stack, page):
    """The page's own job (jobs are private): the phone, another owner, joins its room by the link."""
    job = TrainingJob(stack.redis_url, name="room heart", total=2000, owner_token=owner_of(page))
    job.checkpoint(as_checkpoint(HEART, 300, 0.02))
    yield job
    job.close()


def test_a_job_card_opens_a_room_and_a_phone_joins_it(page, phone, stack, job) -> None:
    open_app(page, "jobs")
    card = page.locator(f'li[data-job-id="{job.id}"]')
    expect(card.locator('[data-action="room"]')).to_be_visible()
    card.locator('[data-action="room"]').click()
    page.wait_for_url("**/room.html?code=*#host=*")
    expect(page.locator("#host-panel")).to_be_visible()
    page.wait_for_function("() => document.getElementById('room-qr').naturalWidth > 100")
    page.wait_for_function("() => Number(document.getElementById('room-step').textContent) > 30")
    code = page.inner_text("#room-code")
    link = page.get_attribute("#room-link", "href")
    assert link.endswith(f"/room.html?code={code}")

    phone.goto("/room.html?code=NOPE22")
    expect(phone.locator("#join-error")).to_contain_text("no open room")
    screenshot(phone, "room-phone-wrong-code")
    sent: list[str] = []
    phone.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(str(payload))))
    phone.goto(link)
    phone.wait_for_function("() => Number(document.getElementById('room-step').textContent) > 30")
    expect(page.locator("#room-people")).to_have_text("2")
    expect(phone.locator("#host-panel")).to_be_hidden()
    # A double-tap on the phone plants a seed: the host's page rings the phone's stroke in its colour.
    box = phone.locator("#room-canvas").bounding_box()
    for _ in range(2):
        phone.touchscreen.tap(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.8)
    page.wait_for_function("""() => { const c = document.getElementById('room-strokes');
        return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v > 0); }""",
                           timeout=5_000)
    assert [m for m in sent if '"cmd"' in m] and all('"cmd":"seed"' in m for m in sent if '"cmd"' in m), sent
    screenshot(page, "room-host-from-job-card")
    screenshot(phone, "room-phone-joined-by-link")
    page.click("#host-fullscreen")  # for a projector: the pattern and the QR code fill the screen
    page.wait_for_function("() => document.fullscreenElement?.id === 'room'")
    assert page.locator("#room-qr").is_visible() and not page.locator("#host-reset").is_visible()
    screenshot(page, "room-host-full-screen")
    page.evaluate("() => document.exitFullscreen()")  # what Esc does (the button is hidden in full screen)
    page.wait_for_function("() => !document.fullscreenElement")
    page.click("#host-close")
    expect(phone.locator("#room-connection")).to_have_text("closed")
