"""The Watch view of a job that is still training, in a real browser against the real stream: each new
checkpoint regrows the pattern from the seed and the page says which checkpoint plays; when the job
finishes, the label and the status line say so.

The job gets its checkpoints the way a worker gives them (tests/stream/jobs.py), so that the test
chooses them: first a bad early model that blows the cells up into noise (what a user saw for a
whole 7-minute run before regrowing), then the shipped heart, a good model.
"""

from __future__ import annotations

import pytest
import torch
from playwright.sync_api import expect

from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo
from tests.frontend.pages import ca_step, open_app, painted, screenshot, set_range, wait_painted
from tests.stream.jobs import HEART, TrainingJob, as_checkpoint


def exploding_model(iteration: int) -> ModelFile:
    """A bad early checkpoint: every cell's alpha rises (the live region fills the grid in ~20 steps) and
    the state slowly blows up into saturated red/green/yellow noise, finite for thousands of steps."""
    torch.manual_seed(3)
    net = NCA()
    with torch.no_grad():
        net.hidden_to_update.weight.normal_(0.0, 0.01)
        net.hidden_to_update.bias.normal_(0.0, 0.02)
        net.hidden_to_update.bias[3] = 0.05
    info = ModelInfo(grid_height=36, grid_width=36, iterations=iteration, final_loss=0.4, name="apple",
                     experiment="regenerating")
    return ModelFile(net, info)


@pytest.fixture
def job(page, stack):  # the page's: its owner lists it
    job = TrainingJob(stack.redis_url, name="apple", total=2000, owner_token=stack.owner_token)
    yield job
    job.close()


def selected_label(page) -> str:
    return page.eval_on_selector("#model-select", "(s) => s.selectedOptions[0].textContent")


def test_a_new_checkpoint_regrows_the_pattern_and_the_page_says_which_one_plays(page, stack, job):
    job.checkpoint(exploding_model(100))
    open_app(page, f"watch/{job.id}")
    expect(page.locator("#model-select")).to_have_value(job.id)
    assert selected_label(page) == "apple · regenerating (training)"
    expect(page.locator("#model-info")).to_contain_text("iteration 100 · loss 4.0e-1 · training")
    expect(page.locator("#watch-status")).to_have_text(
        "Still training: each new checkpoint regrows the pattern from the seed with it.")
    # With the replay off (it would regrow every 288 steps), the early model plays on into its noise.
    page.locator("#loop").uncheck()
    set_range(page, "#steps-per-frame", 16)
    wait_painted(page, "p > 0.9")  # the early model's noise
    page.wait_for_function("() => Number(document.getElementById('ca-step').textContent) > 600")
    noise_step = ca_step(page)
    screenshot(page, "watch-training-noise")

    set_range(page, "#steps-per-frame", 1)  # slow, so that the seed stays on screen a moment
    set_range(page, "#fps", 4)
    job.checkpoint(as_checkpoint(HEART, 1500, 0.0021))
    expect(page.locator("#watch-status")).to_have_text(
        "Regrown from the seed with the checkpoint at iteration 1,500, loss 2.1e-3.")
    expect(page.locator("#model-info")).to_contain_text("iteration 1,500 · loss 2.1e-3 · training")
    reborn = wait_painted(page, "p < 0.05", timeout=5_000)  # back to the seed: the noise is gone
    assert ca_step(page) < min(noise_step, 5), "the CA step did not restart with the new checkpoint"
    screenshot(page, "watch-training-regrown-seed")

    set_range(page, "#fps", 30)
    set_range(page, "#steps-per-frame", 2)
    page.wait_for_function("() => Number(document.getElementById('ca-step').textContent) > 120")
    grown = painted(page)
    assert 0.15 < grown < 0.6, f"the heart should cover part of the grid, not noise it: {grown:.2f}"
    assert grown > reborn + 0.1
    screenshot(page, "watch-training-regrown")


def test_the_watch_label_follows_the_job_when_it_finishes(page, stack, job):
    job.checkpoint(as_checkpoint(HEART, 2000, 0.0018))
    open_app(page, f"watch/{job.id}")
    expect(page.locator("#model-info")).to_contain_text("· training")
    assert selected_label(page) == "apple · regenerating (training)"
    page.wait_for_function("() => Number(document.getElementById('ca-step').textContent) > 30")
    job.finish("succeeded")
    expect(page.locator("#watch-status")).to_have_text("Training finished at iteration 2,000: this is the final model.")
    expect(page.locator("#model-info")).to_contain_text("iteration 2,000 · loss 1.8e-3 · training finished")
    assert selected_label(page) == "apple · regenerating"
    screenshot(page, "watch-training-finished")
    step = ca_step(page)
    page.wait_for_function(f"() => Number(document.getElementById('ca-step').textContent) > {step}")  # plays on


def test_a_cancelled_job_says_so_on_the_watch_view(page, stack, job):
    job.checkpoint(as_checkpoint(HEART, 700, 0.01))
    open_app(page, f"watch/{job.id}")
    expect(page.locator("#model-info")).to_contain_text("· training")
    job.finish("cancelled")
    expect(page.locator("#watch-status")).to_have_text(
        "Training was cancelled: this is its last checkpoint, iteration 700.")
    expect(page.locator("#model-info")).to_contain_text("training cancelled")
    assert selected_label(page) == "apple · regenerating (cancelled)"
