"""Readable on a phone and usable from the keyboard: every view at a phone's width, focus rings, labels."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.conftest import png_image
from tests.frontend.pages import open_app, screenshot
from tests.helpers import synthetic_photo


@pytest.fixture
def some_job(stack) -> None:
    """At least one job in the list, so the Jobs view has cards to lay out."""
    if stack.http.get(f"{stack.api_url}/api/jobs", timeout=10).json()["total"] == 0:
        options = {"name": "phone check", "iterations": 30, "target_size": 8, "padding": 4, "batch_size": 4,
                   "pool_size": 8, "min_steps": 8, "max_steps": 12}
        response = stack.http.post(f"{stack.api_url}/api/jobs", data=options, timeout=10,
                              files={"image": ("disc.png", png_image((32, 32)), "image/png")})
        assert response.status_code == 202, response.text


@pytest.mark.parametrize("view", ["train", "jobs", "watch"])
def test_views_fit_a_phone(phone, view, some_job):
    open_app(phone, view)
    expect(phone.locator(f"#view-{view}")).to_be_visible()
    phone.wait_for_timeout(500)  # lists and the first frames arrive
    overflow = phone.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the {view} view is {overflow}px wider than the phone's screen"
    # Nothing is cut off at the right edge: every visible control lies within the screen.
    outside = phone.evaluate("""() => [...document.querySelectorAll('button, input, select, canvas, a')]
      .filter((el) => el.offsetParent !== null)
      .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1)
      .map((el) => el.id || el.textContent.trim())""")
    assert outside == []
    screenshot(phone, f"{view}-phone")


def test_keyboard_focus_is_visible_and_controls_are_labelled(page, stack, tmp_path):
    open_app(page, "train")
    page.keyboard.press("Tab")  # first stop: the site title link
    page.keyboard.press("Tab")  # then the Train tab in the navigation
    focused = page.evaluate("""() => {
      const el = document.activeElement, style = getComputedStyle(el);
      return {text: el.textContent.trim(), visible: el.matches(':focus-visible'),
              ring: style.outlineStyle !== 'none' || style.boxShadow !== 'none'};
    }""")
    assert focused == {"text": "Train", "visible": True, "ring": True}
    # Every form control on every view has a label a screen reader can announce.
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, canvas, progress')]
      .filter((el) => el.type !== 'hidden')
      .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
      .map((el) => el.id || el.outerHTML.slice(0, 60))""")
    assert unlabelled == []
    # A picture-only canvas is an image to assistive tech (a bare canvas's label is not announced);
    # the preview's two appear once there is an image to show.
    photo = tmp_path / "toy.png"
    synthetic_photo().save(photo)
    page.set_input_files("#image-input", str(photo))
    expect(page.get_by_role("img", name="Your image, before")).to_have_count(1)
    expect(page.get_by_role("img", name="Processed target on its padded grid")).to_have_count(1)
    # Status and error lines are live regions, so changes are announced.
    for selector in ["#upload-error", "#upload-status", "#jobs-status", "#watch-status"]:
        assert page.get_attribute(selector, "aria-live") in ("polite", "assertive")


def boxes(page, *selectors: str) -> list[dict]:
    return [page.locator(selector).first.bounding_box() for selector in selectors]


def test_on_a_phone_the_preview_is_right_under_the_file_input(phone, tmp_path):
    photo = tmp_path / "toy.png"
    synthetic_photo().save(photo)
    open_app(phone, "train")
    phone.set_input_files("#image-input", str(photo))
    expect(phone.locator("#preview-caption")).to_contain_text("cells on a")
    drop, preview, experiments = boxes(phone, "#drop-zone", ".preview", ".experiments")
    assert 0 <= preview["y"] - (drop["y"] + drop["height"]) <= 32  # nothing in between
    assert preview["y"] + preview["height"] <= experiments["y"]  # the form's options come after it
    original, target = boxes(phone, "#original-preview", "#target-preview")
    assert original["width"] > 100 and target["width"] > 100  # before and after side by side, both readable
    assert abs(original["y"] - target["y"]) < 2
    screenshot(phone, "train-photo-phone")


def test_on_a_wide_screen_the_preview_is_beside_the_form(page, stack):
    open_app(page, "train")
    drop, preview, options = boxes(page, "#drop-zone", ".preview", ".options")
    assert preview["x"] >= drop["x"] + drop["width"] and abs(preview["y"] - drop["y"]) < 2
    assert options["y"] > drop["y"] + drop["height"] and options["x"] == drop["x"]


def test_every_option_says_what_it_does(page, stack):
    """Each field of the form, Advanced ones included, has a one-line explanation tied to it."""
    open_app(page, "train")
    page.click("#upload-form details.advanced summary")
    hints = page.evaluate("""() => [...document.querySelectorAll('#upload-form input, #upload-form select')]
      .filter((el) => el.offsetParent !== null && !['file', 'radio', 'password'].includes(el.type))
      .map((el) => [el.id, document.getElementById(el.getAttribute('aria-describedby'))?.textContent ?? ''])
      .map(([id, text]) => [id, text.replace(/\\s+/g, ' ').trim()])""")
    assert len(hints) >= 12
    assert [name for name, hint in hints if not hint] == []
    assert all(len(hint) < 110 for _, hint in hints), hints  # a line, not a paragraph
