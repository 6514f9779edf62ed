"""The training timeline in a real browser: the Watch view's slider switches what the canvas shows
between the job's checkpoints (a snapshot, or the latest live), and the job card shows a strip of
pictures grown from its checkpoints, each opening the Watch view on it.

The slider's job gets its checkpoints the way a worker gives them (tests/stream/jobs.py), so that the
test knows what each one grows: an untrained early one (the seed never grows) and the shipped heart.
The strip's job is trained by the stack's real worker.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo
from tests.frontend.pages import open_app, screenshot, set_range, trained_job, wait_painted
from tests.stream.jobs import HEART, TrainingJob, as_checkpoint


def untrained(iteration: int) -> ModelFile:
    """An early checkpoint: the update network's last layer is still zero, so the seed never grows."""
    return ModelFile(NCA(), ModelInfo(grid_height=36, grid_width=36, iterations=iteration, final_loss=0.5,
                                      name="heart", experiment="regenerating"))


@pytest.fixture
def job(page, stack):  # the page's: its owner lists it
    job = TrainingJob(stack.redis_url, name="heart", total=300, owner_token=stack.owner_token)
    job.checkpoint(untrained(100))
    job.checkpoint(as_checkpoint(HEART, 200, 0.004))
    job.checkpoint(as_checkpoint(HEART, 300, 0.002))
    job.finish("succeeded")
    yield job
    job.close()


def step_above(page, step: int) -> None:
    page.wait_for_function(f"() => Number(document.getElementById('ca-step').textContent) > {step}")


def test_the_slider_switches_the_canvas_between_checkpoints(page, stack, job):
    open_app(page, f"watch/{job.id}@100")
    slider = page.locator("#timeline")
    expect(slider).to_be_visible()
    expect(slider).to_have_value("0")
    expect(page.locator("#timeline-value")).to_have_text("1 / 3")
    expect(page.locator("#timeline-info")).to_have_text(
        "Iteration 100, loss 5.0e-1: a snapshot of the training at that point.")
    expect(page.locator("#model-select")).to_have_value(job.id)
    expect(page.locator("#model-info")).to_contain_text("iteration 100 · loss 5.0e-1")
    set_range(page, "#steps-per-frame", 4)
    step_above(page, 100)
    wait_painted(page, "p < 0.01", timeout=2_000)  # the early model: the seed alone, however long it plays
    screenshot(page, "watch-timeline-early")

    set_range(page, "#timeline", 2)  # the latest: live
    expect(page).to_have_url(f"{stack.api_url}/#watch/{job.id}")
    expect(page.locator("#timeline-info")).to_have_text("Iteration 300, loss 2.0e-3: the latest checkpoint.")
    expect(page.locator("#model-info")).to_contain_text("iteration 300 · loss 2.0e-3")
    wait_painted(page, "p > 0.15")  # the heart grows
    step_above(page, 100)
    screenshot(page, "watch-timeline-latest")

    set_range(page, "#timeline", 0)  # and back: the canvas starts over from the seed, which stays alone
    expect(page).to_have_url(f"{stack.api_url}/#watch/{job.id}%40100")
    expect(page.locator("#model-info")).to_contain_text("iteration 100 · loss 5.0e-1")
    wait_painted(page, "p < 0.01", timeout=5_000)
    step_above(page, 100)
    wait_painted(page, "p < 0.01", timeout=2_000)


def test_the_job_card_shows_its_checkpoints_grown_and_opens_one(page, stack):
    job_id = trained_job(stack, iterations=60, checkpoint_every=10, name="replay")

    open_app(page, "jobs")
    card = page.locator(f'.job[data-job-id="{job_id}"]')
    items = card.locator(".strip-item")
    expect(items).to_have_count(6)  # every checkpoint: 10, 20, ..., 60
    assert items.first.get_attribute("title").startswith("Iteration 10, loss ")
    pictures = card.locator(".strip-item img")
    # Shown only once every picture has arrived: never caught half loaded.
    assert page.evaluate("(id) => [...document.querySelectorAll(`.job[data-job-id='${id}'] .strip-item img`)]"
                         ".every((img) => img.complete && img.naturalWidth === 12)", job_id)
    sources = [pictures.nth(i).get_attribute("src") for i in range(6)]
    assert sources[0] == f"/api/jobs/{job_id}/checkpoints/10/preview.png?scale=1&v=1"
    first, last = (stack.http.get(stack.api_url + src, timeout=10).content for src in (sources[0], sources[-1]))
    assert first != last  # the pictures show the training, not one model six times
    screenshot(page, "jobs-timeline-strip")

    items.nth(1).click()
    expect(page).to_have_url(f"{stack.api_url}/#watch/{job_id}%4020")
    expect(page.locator("#timeline")).to_have_value("1")
    expect(page.locator("#model-info")).to_contain_text("iteration 20")
