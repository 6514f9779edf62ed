"""Two people, one server, real chromium: separate browser contexts are separate owners.

A's job is A's: B's Jobs and Watch views do not list it; A's share link opens it in B read-only (the
stream plays it); publishing puts it in a third visitor's Watch list; revoking closes the link;
Delete (confirmed) removes it. "Use from the command line" shows the owner token, and pasting it in
another browser brings the jobs there.
"""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.frontend.conftest import own_browser
from tests.frontend.pages import DESKTOP, open_app, screenshot, trained_job, wait_painted


@pytest.fixture
def second(browser, stack):
    """Another browser (its own cookies): another owner."""
    contexts = []

    def open_one():
        context = browser.new_context(viewport=DESKTOP, base_url=stack.api_url)
        contexts.append(context)
        return context

    yield open_one
    for context in contexts:
        context.close()


def test_owners_share_publish_revoke_delete_and_carry_a_token(page, stack, second):
    a_headers = {"X-Owner-Token": stack.owner_token}
    job_id = trained_job(stack, iterations=20, name="alice's square")

    bob_context = second()
    own_browser(bob_context, stack)
    bob = bob_context.new_page()
    open_app(bob, "jobs")
    expect(bob.locator("#jobs-empty")).to_be_visible()
    expect(bob.locator(".job")).to_have_count(0)
    open_app(bob, "watch")
    expect(bob.locator(f"#model-select option[value='{job_id}']")).to_have_count(0)
    assert httpx.get(f"{stack.api_url}/api/models/{job_id}/file", headers={"X-Owner-Token": stack.owner_token},
                     timeout=10).status_code == 404  # stack.owner_token is Bob's now

    open_app(page, "jobs")
    card = page.locator(f".job[data-job-id='{job_id}']")
    expect(card.locator(".badge")).to_have_text("succeeded")
    card.get_by_role("button", name="Share").click()
    expect(card.locator(".job-owner-note")).to_contain_text(re.compile("Share link copied|Copy this share link"))
    share_link = card.locator(".job-shares a")
    expect(share_link).to_have_count(1)
    share_url = share_link.get_attribute("href")
    page.locator("#cli-panel summary").click()
    screenshot(page, "jobs-owner-shared")

    bob.goto(share_url)
    expect(bob).to_have_url(f"{stack.api_url}/#watch/{job_id}")
    expect(bob.locator("#model-select")).to_have_value(job_id)
    wait_painted(bob, "p > 0.01", timeout=30_000)  # the stream plays it to the share holder
    screenshot(bob, "watch-shared")
    open_app(bob, "jobs")
    expect(bob.locator(".job")).to_have_count(0)  # shared with Bob, not Bob's

    visitor = second().new_page()
    open_app(visitor, "watch")
    expect(visitor.locator(f"#model-select option[value='{job_id}']")).to_have_count(0)
    card.get_by_role("button", name="Publish").click()
    expect(card.get_by_role("button", name="Unpublish")).to_be_visible()
    visitor.reload()
    visitor.wait_for_selector("body[data-ready=true]")
    expect(visitor.locator(f"#model-select option[value='{job_id}']")).to_have_count(1)
    card.get_by_role("button", name="Unpublish").click()
    expect(card.get_by_role("button", name="Publish")).to_be_visible()

    card.locator(".job-shares").get_by_role("button", name="Revoke").click()
    expect(card.locator(".job-shares a")).to_have_count(0)
    assert bob.request.get(share_url, max_redirects=0).status == 404
    assert bob.request.get(f"/api/jobs/{job_id}").status == 404

    # The command-line panel: the token, a curl example, and carrying the jobs to another browser.
    token = page.locator("#owner-token").input_value()
    assert token.count(".") == 2
    expect(page.locator("#owner-curl")).to_contain_text(f"X-Owner-Token: {token}")
    open_app(visitor, "jobs")
    visitor.locator("#cli-panel summary").click()
    visitor.fill("#owner-paste", token)
    visitor.get_by_role("button", name="Use this token").click()
    visitor.wait_for_selector(f".job[data-job-id='{job_id}']")
    expect(visitor.locator("#owner-token")).to_have_value(token)
    screenshot(visitor, "jobs-token-carried")

    card.get_by_role("button", name="Delete").click()
    expect(card.locator("[data-role=confirm-delete]")).to_be_visible()
    screenshot(page, "jobs-confirm-delete")
    card.get_by_role("button", name="Keep it").click()
    expect(card).to_have_count(1)
    card.get_by_role("button", name="Delete").click()
    card.get_by_role("button", name="Delete for good").click()
    expect(page.locator(f".job[data-job-id='{job_id}']")).to_have_count(0)
    assert httpx.get(f"{stack.api_url}/api/jobs/{job_id}", headers=a_headers, timeout=10).status_code == 404
