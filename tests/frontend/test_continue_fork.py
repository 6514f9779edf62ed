"""Continue and fork from the page, with the stack's real worker: a finished job's card offers "Continue
training" (a new job on the same target, from its weights) and "Train a new picture from this" (the Train
form, starting from it); the new job's card says where it started."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.conftest import wait_for
from tests.frontend.pages import open_app, screenshot, trained_job


def test_continue_and_fork_from_a_job_card(page, stack):
    source = trained_job(stack, iterations=40, name="source")
    open_app(page, "jobs")
    card = page.locator(f'li.job[data-job-id="{source}"]')
    expect(card.locator('[data-action="continue"]')).to_be_visible()
    expect(card.locator('[data-action="fork"]')).to_be_visible()
    expect(card.locator(".job-lineage")).to_be_hidden()
    battery = card.locator(".model-card .battery")  # the card's damage battery, in one line
    expect(battery).to_contain_text("5,000 steps", timeout=60_000)
    expect(battery).to_contain_text("five eraser swipes")
    screenshot(page, "jobs-card-battery")

    card.locator('[data-action="fork"]').click()
    expect(page.locator("#view-train")).to_be_visible()
    expect(page.locator("#option-start-from")).to_have_value(source)
    expect(page.locator("#upload-status")).to_contain_text(f"starts from {source}")
    screenshot(page, "train-fork-from-job")

    open_app(page, f"watch/{source}@20")  # the Watch view's training history offers both for the checkpoint shown
    expect(page.locator("#timeline-fork")).to_have_attribute("href", f"#train/{source}%4020")
    expect(page.locator("#timeline-continue")).to_have_attribute("href", f"#continue/{source}%4020")
    screenshot(page, "watch-timeline-fork")

    open_app(page, "jobs")
    before = {job["id"] for job in stack.http.get(f"{stack.api_url}/api/jobs", timeout=10).json()["items"]}
    page.locator(f'li.job[data-job-id="{source}"] [data-action="continue"]').click()
    expect(page).to_have_url(f"{stack.api_url}/#jobs")
    new = wait_for(lambda: ({job["id"] for job in stack.http.get(f"{stack.api_url}/api/jobs", timeout=10)
                             .json()["items"]} - before) or None, timeout=20, what="the continued job")
    (job_id,) = new
    record = stack.http.get(f"{stack.api_url}/api/jobs/{job_id}", timeout=10).json()
    assert record["options"]["start_from"] == source
    expect(page.locator(f'li.job[data-job-id="{job_id}"] .job-lineage')).to_have_text(f"Started from {source}")
    screenshot(page, "jobs-continued")
