"""The Jobs view tells the truth: notes follow the job's state, long jobs ask before they are cancelled,
finished jobs say how long they trained and where."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.conftest import png_image
from tests.frontend.pages import open_app, screenshot

LONG = {"iterations": 5000, "target_size": 8, "padding": 4, "batch_size": 4, "pool_size": 8, "min_steps": 8,
        "max_steps": 12, "checkpoint_every": 10}

# Every text the card's note shows, in order (a MutationObserver sees even a short-lived one).
RECORD_NOTES_JS = """(id) => {
  const note = document.querySelector(`.job[data-job-id="${id}"] .job-note`);
  window.seenNotes = [note.textContent];
  new MutationObserver(() => window.seenNotes.push(note.textContent))
    .observe(note, {childList: true, characterData: true, subtree: true});
}"""


def start_job(stack, name: str) -> dict:
    return start_job_with(stack, {**LONG, "name": name})


def test_cancel_asks_after_a_minute_and_every_note_follows_the_job(page, stack):
    running = start_job(stack, "long disc")
    start_job(stack, "waiting disc")  # one worker: this one waits
    open_app(page, "jobs")
    card, queued = page.locator(".job", has_text="long disc"), page.locator(".job", has_text="waiting disc")
    expect(card.locator(".badge")).to_have_text("running", timeout=60_000)
    expect(queued.locator(".badge")).to_have_text("queued")

    queued.locator("[data-action=cancel]").click()  # it has not trained at all: no question asked
    expect(queued.locator(".badge")).to_have_text("cancelled")
    expect(queued.locator(".job-numbers")).to_contain_text("cancelled before it started")

    # The page's clock two minutes after the job started: a misclick would now throw away two minutes.
    started_at = stack.http.get(f"{stack.api_url}/api/jobs/{running['id']}", timeout=10).json()["started_at"]
    page.clock.set_fixed_time(started_at + 125)
    card.locator("[data-action=cancel]").click()
    confirm = card.locator(".job-confirm")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("It has trained for 2m 0")
    expect(card.locator("[data-action=confirm-cancel]")).to_be_focused()
    screenshot(page, "jobs-confirm")
    card.get_by_role("button", name="Keep training").click()
    expect(confirm).to_be_hidden()
    expect(card.locator(".badge")).to_have_text("running")
    assert stack.http.get(f"{stack.api_url}/api/jobs/{running['id']}", timeout=10).json()["cancel_requested"] is False

    page.evaluate(RECORD_NOTES_JS, running["id"])
    card.locator("[data-action=cancel]").click()
    card.get_by_role("button", name="Stop training").click()
    expect(card.locator(".badge")).to_have_text("cancelled", timeout=30_000)
    seen = page.evaluate("() => window.seenNotes")
    assert any("Cancel requested" in text for text in seen), seen  # said while it was true...
    expect(card.locator(".job-note")).to_have_text("")  # ...and gone once the card says cancelled
    expect(page.locator("#view-jobs")).not_to_contain_text("Cancel requested")
    expect(card.locator(".job-numbers")).to_contain_text(re.compile(r"trained \d+s on cpu"))
    screenshot(page, "jobs-finished")


def test_a_lost_connection_is_reported_only_while_it_lasts(page, stack):
    job = start_job(stack, "polled disc")
    open_app(page, "jobs")
    expect(page.locator(".job", has_text="polled disc").locator(".badge")).to_have_text(re.compile("queued|running"))
    status = page.locator("#jobs-status")
    stack.api.stop()
    try:
        expect(status).to_contain_text(f"Lost touch with job {job['id'][:8]}", timeout=20_000)
    finally:
        stack.api.start()
    expect(status).to_have_text("", timeout=30_000)  # the next poll that gets through clears it
    assert stack.http.post(f"{stack.api_url}/api/jobs/{job['id']}/cancel", timeout=10).status_code in (200, 202)


def test_a_job_that_finished_early_says_so_and_why(page, stack):
    """early_stop_patience: a learning rate too small to learn anything stops the run after `patience`
    iterations; the job card says it finished early, at which iteration, and why."""
    options = {**LONG, "iterations": 400, "lr": 1e-12, "early_stop_patience": 5, "name": "stalled disc"}
    job = start_job_with(stack, options)
    open_app(page, "jobs")
    card = page.locator(f'.job[data-job-id="{job["id"]}"]')
    expect(card.locator(".badge")).to_have_text("succeeded", timeout=120_000)
    expect(card.locator(".job-note")).to_contain_text(re.compile(r"It finished early at iteration \d+: the loss had "
                                                                 r"not improved"))
    assert stack.http.get(f"{stack.api_url}/api/jobs/{job['id']}", timeout=10).json()["iteration"] < 400
    screenshot(page, "jobs-finished-early")


def start_job_with(stack, options: dict) -> dict:
    response = stack.http.post(f"{stack.api_url}/api/jobs", data=options, timeout=30,
                               files={"image": ("disc.png", png_image((32, 32)), "image/png")})
    assert response.status_code == 202, response.text
    return response.json()
