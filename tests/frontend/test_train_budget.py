"""The Train form's training time in a real browser against the real stack: a time budget or the paper
recipe, the live estimate of how long it takes here, and a budgeted job as the Jobs view shows it."""

from __future__ import annotations

import math
import re

import httpx
from playwright.sync_api import expect

from tests.frontend.pages import PHONE, open_app, screenshot
from tests.frontend.test_train_view import heart_png


def api_config(stack) -> dict:
    return stack.http.get(f"{stack.api_url}/api/config", timeout=10).json()


def api_estimate(stack, **options) -> httpx.Response:
    return stack.http.post(f"{stack.api_url}/api/estimate", json=options, timeout=10)


def js_seconds(seconds: float) -> str:
    """jobs.js's formatDuration under a minute (JavaScript rounds halves up)."""
    return f"{math.floor(seconds + 0.5)}s"


def test_the_estimate_names_the_device_and_follows_the_options(page, stack):
    """On load the server's default choice is checked and the estimate says how long on which device; it
    changes with the target size and the training time, and warns when the paper recipe is long here."""
    config = api_config(stack)
    open_app(page, "train")
    expect(page.locator(f"#budget-{config['default_budget']}")).to_be_checked()
    estimate = page.locator("#estimate")
    expect(estimate).to_have_attribute("role", "status")
    expect(estimate).to_have_attribute("aria-live", "polite")
    expect(estimate).to_contain_text(re.compile(r"^≈ .+ on this server's CPU, (no jobs ahead|\d+ jobs? ahead.*)$"))
    expect(page.locator("label[for=budget-quick]")).to_contain_text("Quick look (≈ 5 min)")
    expect(page.locator("label[for=budget-good]")).to_contain_text("Good (≈ 20 min)")

    page.check("#budget-quick")
    expect(estimate).to_contain_text(re.compile(r"^≈ 5 min \([\d,]+ iterations\) on this server's CPU"))
    quick = estimate.inner_text()
    page.fill("#target-size", "16")  # fewer cells: more iterations fit in the same five minutes
    expect(estimate).not_to_have_text(quick)
    expect(estimate).to_contain_text("≈ 5 min")
    screenshot(page, "train-budget")

    page.check("#budget-paper")
    expect(estimate).to_contain_text("(8,000 iterations) on this server's CPU")
    paper_small = estimate.inner_text()
    page.fill("#target-size", "40")
    expect(estimate).not_to_have_text(paper_small)  # the paper recipe takes longer on a larger target
    note = page.locator("#estimate-note")
    expect(estimate).to_contain_text("(8,000 iterations)")
    paper = api_estimate(stack, iterations=8000, target_size=40, padding=16).json()
    if paper["long"]:  # slower than half an hour on this machine: say so, and what to do instead
        expect(note).to_be_visible()
        expect(note).to_have_attribute("data-kind", "warning")
        expect(note).to_contain_text(re.compile(r"^The paper recipe takes about \d+ h( \d+ min)? on this "
                                                r"server's CPU: a time budget shows a pattern in minutes\.$"))
        screenshot(page, "train-budget-paper")
    else:
        expect(note).to_be_hidden()

    page.check("#budget-quick")  # back to a budget: the warning goes with the paper recipe
    expect(estimate).to_contain_text("≈ 5 min")
    expect(note).to_be_hidden()


def test_a_budget_plans_the_iterations_and_the_paper_recipe_takes_them(page, stack):
    """With a budget the Iterations field is disabled (the server plans them) and the Advanced batch and
    pool sizes follow the budget recipe; the paper recipe gives the field and the article's sizes back.
    Custom minutes are the only editable minutes, and the server's 422 about them shows in the estimate."""
    config = api_config(stack)
    open_app(page, "train")
    page.click("#upload-form details.advanced summary")
    iterations, minutes = page.locator("#iterations"), page.locator("#minutes")
    batch, pool = page.locator("#batch-size"), page.locator("#pool-size")

    page.check("#budget-paper")
    expect(iterations).to_be_enabled()
    expect(iterations).to_have_value(str(config["defaults"]["iterations"]))
    expect(minutes).to_be_disabled()
    expect(batch).to_have_value(str(config["defaults"]["batch_size"]))
    expect(pool).to_have_value(str(config["defaults"]["pool_size"]))
    page.fill("#iterations", "1234")

    page.check("#budget-good")
    expect(iterations).to_be_disabled()
    expect(minutes).to_be_disabled()
    expect(page.locator("#iterations-hint")).to_contain_text("Planned by the server")
    expect(batch).to_have_value(str(config["budget_defaults"]["batch_size"]))
    expect(pool).to_have_value(str(config["budget_defaults"]["pool_size"]))
    expect(iterations).to_have_attribute("placeholder", re.compile(r"^[\d,]+$"))  # the plan's count
    expect(page.locator("#estimate")).to_contain_text("≈ 20 min")

    page.check("#budget-paper")  # and back: what was typed for the paper recipe is still there
    expect(iterations).to_be_enabled()
    expect(iterations).to_have_value("1234")
    expect(batch).to_have_value(str(config["defaults"]["batch_size"]))

    page.check("#budget-custom")
    expect(minutes).to_be_enabled()
    expect(iterations).to_be_disabled()
    page.fill("#minutes", "7")
    expect(page.locator("#estimate")).to_contain_text("≈ 7 min")
    page.fill("#minutes", "0")
    detail = api_estimate(stack, minutes=0).json()["detail"]
    expect(page.locator("#estimate")).to_have_text(detail[0].upper() + detail[1:])
    expect(page.locator("#estimate")).to_have_attribute("data-kind", "error")


def test_a_quick_look_job_sends_its_minutes(page, stack, tmp_path):
    """"Quick look" starts a job with a five-minute budget and the budget recipe; its card shows the
    budget and, once it trains, the plan. Cancelled, it says how long it trained by its own count."""
    image = tmp_path / "apple.png"
    heart_png(image)
    open_app(page, "train")
    page.set_input_files("#image-input", str(image))
    page.check("#budget-quick")
    page.click("#upload-form details.advanced summary")
    page.fill("#name", "quick apple")
    page.click("#submit-job")
    expect(page).to_have_url(re.compile(r"#jobs$"))
    card = page.locator(".job", has_text="quick apple")
    job_id = card.get_attribute("data-job-id")
    try:
        job = stack.http.get(f"{stack.api_url}/api/jobs/{job_id}", timeout=10).json()
        assert job["options"]["minutes"] == 5
        assert (job["options"]["batch_size"], job["options"]["pool_size"]) == (4, 128)  # the budget recipe
        expect(card.locator(".job-plan")).to_contain_text("Time budget 5 min")
        plan = card.locator(".job-plan")
        expect(plan).to_contain_text(re.compile(r"plan: [\d,]+ iterations, learning rate drops at [\d,]+"),
                                     timeout=60_000)
        screenshot(page, "jobs-budget")
    finally:
        stack.http.post(f"{stack.api_url}/api/jobs/{job_id}/cancel", timeout=10)
    expect(card.locator(".badge")).to_have_text("cancelled", timeout=30_000)
    job = stack.http.get(f"{stack.api_url}/api/jobs/{job_id}", timeout=10).json()
    assert job["plan"]["iterations"] == job["total"]
    if job["trained_seconds"] is not None and job["trained_seconds"] < 59.5:
        expect(card.locator(".job-numbers")).to_contain_text(f"trained {js_seconds(job['trained_seconds'])} on cpu")


def test_the_training_time_reads_well_on_a_phone(phone, stack):
    open_app(phone, "train")
    expect(phone.locator("#estimate")).to_contain_text("this server's CPU")
    phone.locator("#budget-field").scroll_into_view_if_needed()
    overflow = phone.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    box = phone.locator("#minutes").bounding_box()
    assert box["x"] + box["width"] <= PHONE["width"]
    screenshot(phone, "train-budget-phone")
