"""Long lists in a real browser: the Watch view's model picker loads one page, "More models" loads the next,
and its search box asks the server for a model the first page does not show; the Jobs view pages with the
cursor. The jobs are written into the stack's Redis with the store's own functions, as the API and a
worker write them (tests/stream/jobs.py), so nothing trains."""

from __future__ import annotations

import time

import torch
from playwright.sync_api import expect

from backend.nca import JobSpec
from backend.storage.connection import connect
from backend.storage.jobs import JobStore, new_job_id
from backend.storage.owners import Owners
from tests.frontend.pages import open_app, screenshot
from tests.stream.jobs import HEART, TrainingJob, as_checkpoint

MODELS_PAGE = 50  # GET /api/models' default limit: what the picker shows first


def finished_models(stack, names: list[str]) -> list[str]:
    """Jobs of the page's owner with one checkpoint each, finished; the first name oldest."""
    made = []
    for name in names:
        job = TrainingJob(stack.redis_url, name=name, owner_token=stack.owner_token)
        job.checkpoint(as_checkpoint(HEART, 100, 0.01))
        job.finish()
        job.close()
        made.append(job.id)
    return made


def job_options(page) -> list[str]:
    return page.eval_on_selector_all("#model-select optgroup:not([label=Examples]) option", "os => os.map(o => o.text)")


def test_the_model_picker_loads_a_page_more_and_searches_the_server(page, stack):
    needle = finished_models(stack, ["Needle lizard"])[0]
    finished_models(stack, [f"hay {i:02d}" for i in range(MODELS_PAGE + 2)])
    open_app(page, "watch")
    expect(page.locator("#model-select optgroup[label='Finished jobs'] option")).to_have_count(MODELS_PAGE)
    assert not any("Needle" in o for o in job_options(page))
    expect(page.locator("#more-models")).to_be_visible()
    screenshot(page, "watch-model-list-first-page")

    page.click("#more-models")
    expect(page.locator("#model-select optgroup[label='Finished jobs'] option")).to_have_count(MODELS_PAGE + 3)
    expect(page.locator("#more-models")).to_be_hidden()  # that was the last page
    assert job_options(page)[-1].startswith("Needle lizard")  # the oldest, last, in its group

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#model-select optgroup[label='Finished jobs'] option")).to_have_count(MODELS_PAGE)
    playing = page.input_value("#model-select")
    with page.expect_response(lambda r: "/api/models?" in r.url and "q=needle" in r.url):
        page.fill("#model-search", "needle")
    expect(page.locator("#model-select optgroup[label='Finished jobs'] option")).to_have_count(1)
    expect(page.locator(f"#model-select option[value='{needle}']")).to_have_count(1)
    assert page.input_value("#model-select") == playing  # searching does not switch what plays
    page.select_option("#model-select", needle)
    expect(page.locator("#model-info")).to_contain_text("36×36 cells")
    expect(page).to_have_url(f"{stack.api_url}/#watch/{needle}")
    screenshot(page, "watch-model-search")

    page.fill("#model-search", "no such model anywhere")
    expect(page.locator("#watch-status")).to_contain_text("No model's name contains")
    expect(page.locator(f"#model-select option[value='{needle}']")).to_have_count(1)  # the one playing stays


def test_a_link_to_a_model_past_the_first_page_plays_it(page, stack):
    older = finished_models(stack, ["Old heart"])[0]
    finished_models(stack, [f"newer {i:02d}" for i in range(MODELS_PAGE + 1)])
    open_app(page, f"watch/{older}")
    expect(page.locator("#model-select")).to_have_value(older)
    expect(page.locator("#connection")).to_have_text("live")


def test_the_jobs_view_pages_with_the_cursor(page, stack):
    client = connect(stack.redis_url)
    store, owners = JobStore(client), Owners(client)
    owner = stack.owner_token.split(".")[0]
    for i in range(23):  # queued, never sent to a worker: they stay as they are
        job_id = new_job_id()
        owners.claim(job_id, owner)
        store.create(job_id, JobSpec.from_options({"name": f"queued {i:02d}", "iterations": 100}),
                     torch.zeros(4, 8, 8))
        time.sleep(0.002)
    client.close()
    open_app(page, "jobs")
    expect(page.locator(".job")).to_have_count(20)
    expect(page.locator("#more-jobs")).to_be_visible()
    with page.expect_response(lambda r: "/api/jobs?" in r.url and "cursor=" in r.url):
        page.click("#more-jobs")
    expect(page.locator(".job")).to_have_count(23)
    expect(page.locator("#more-jobs")).to_be_hidden()
    expect(page.locator(".job").last).to_contain_text("queued 00")
    screenshot(page, "jobs-paged")


