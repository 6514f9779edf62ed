"""The Train and Jobs views in a real browser against the real stack: upload, progress, errors."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from backend.nca import modelfile
from backend.storage.embedded_redis import free_port
from tests.frontend.conftest import Server
from tests.frontend.pages import SCREENSHOTS, open_app, screenshot
from tests.helpers import synthetic_photo

# Tiny training options (through the advanced fields) so the job finishes in seconds on CPU.
TINY = {"#target-size": "8", "#iterations": "30", "#padding": "4", "#batch-size": "4", "#pool-size": "8",
        "#min-steps": "8", "#max-steps": "12"}


def heart_png(path) -> None:
    """A red blob with a green leaf on a transparent 48x48 image."""
    img = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse((6, 12, 42, 46), fill=(220, 40, 60, 255))
    draw.ellipse((24, 2, 40, 16), fill=(40, 160, 70, 255))
    img.save(path)


def preview_cells(page) -> np.ndarray:
    """The preview canvas's pixels, (H*scale, W*scale, 4): a whole-number upscale of the cells."""
    data = page.evaluate("""() => {
      const c = document.getElementById('target-preview');
      return {w: c.width, h: c.height, px: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)};
    }""")
    return np.array(data["px"], dtype=np.uint8).reshape(data["h"], data["w"], 4)


def on_white(png: bytes) -> np.ndarray:
    rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=np.float32) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def cell_centres(pixels: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """One pixel per cell (its centre) of a canvas that shows `grid` upscaled by a whole number."""
    scale = pixels.shape[0] // grid.shape[0]
    assert pixels.shape[:2] == (grid.shape[0] * scale, grid.shape[1] * scale)
    return pixels[scale // 2::scale, scale // 2::scale, :3].astype(int)


def test_a_photo_is_shown_before_and_after_its_cut_out(page, stack, tmp_path):
    """An opaque photo: the subject is cut out by default (the server's own processing, shown as it
    will be trained), with a one-line explanation, a warning when the cut-out is turned off, and the
    job then trains on exactly what was shown."""
    photo = tmp_path / "toy.png"  # an opaque PNG (tests/nca/test_target.py cuts a JPEG)
    synthetic_photo().save(photo)
    open_app(page, "train")
    page.set_input_files("#image-input", str(photo))
    caption = page.locator("#preview-caption")
    expect(caption).to_contain_text("cells on a")
    expect(page.locator("#original-preview")).to_be_visible()  # before
    expect(page.locator("#target-preview")).to_be_visible()  # after
    expect(page.locator("#background")).to_have_value("auto")
    expect(page.locator("#background-hint")).to_contain_text("cut out of your photo")
    expect(page.locator("#preview-note")).to_be_hidden()
    screenshot(page, "train-photo")

    def server_preview(**fields) -> dict:
        response = stack.http.post(f"{stack.api_url}/api/targets/preview", timeout=30, data=fields,
                              files={"image": ("toy.png", photo.read_bytes(), "image/png")})
        assert response.status_code == 200, response.text
        return response.json()

    expected = server_preview(target_size="40", padding="16", background="auto")
    grid = on_white(base64.b64decode(expected["png"]))
    assert grid.shape[:2] == (expected["grid_height"], expected["grid_width"])
    assert np.abs(cell_centres(preview_cells(page), grid) - grid).max() <= 2  # the page draws the server's target
    assert f"{expected['filled'] * 100:.1f} %" in caption.inner_text()
    p = 16
    assert (grid[p, p] == 255).all() and (grid[p, -p - 1] == 255).all()  # corners of the image part: cut away
    centre = grid[grid.shape[0] // 2, grid.shape[1] // 2]
    assert centre[0] > 150 > centre[2]  # the orange subject

    page.select_option("#background", "keep")  # the way to turn it off
    note = page.locator("#preview-note")
    expect(note).to_contain_text("no transparent background")
    kept = server_preview(target_size="40", padding="16", background="keep")
    assert kept["filled"] > expected["filled"]
    expect(caption).to_contain_text(f"fills {kept['filled'] * 100:.1f} %")
    whole = on_white(base64.b64decode(kept["png"]))
    expect(page.locator("#target-preview")).to_have_js_property("width", preview_cells(page).shape[1])
    assert np.abs(cell_centres(preview_cells(page), whole) - whole).max() <= 2

    page.select_option("#background", "auto")
    page.check("#budget-paper")  # a set number of iterations, not a time budget
    page.click("#upload-form details.advanced summary")
    for selector, value in TINY.items():
        page.fill(selector, value)
    expect(caption).to_contain_text(re.compile(r"on a (\d+×16|16×\d+) grid"))  # 8 cells + 2 x 4 of padding
    expect(note).to_be_hidden()
    shown = preview_cells(page)
    page.click("#submit-job")
    expect(page).to_have_url(re.compile(r"#jobs$"))
    card = page.locator(".job", has_text="toy").first
    job_id = card.get_attribute("data-job-id")
    stored = on_white(stack.http.get(f"{stack.api_url}/api/jobs/{job_id}/target.png", timeout=10).content)
    assert np.abs(cell_centres(shown, stored) - stored).max() <= 2  # trained on what was shown
    expect(card.locator(".badge")).to_have_text("succeeded", timeout=120_000)


def test_upload_trains_to_success(page, stack, tmp_path):
    image = tmp_path / "apple.png"
    heart_png(image)
    open_app(page, "train")
    page.set_input_files("#image-input", str(image))
    # The preview mirrors the core: at the defaults 48x48 -> 40x40 cells with 16 empty cells around.
    expect(page.locator("#preview-caption")).to_contain_text("40×40 cells on a 72×72 grid")
    screenshot(page, "train")
    page.check("#budget-paper")  # a set number of iterations, not a time budget
    page.click("#upload-form details.advanced summary")
    for selector, value in TINY.items():
        page.fill(selector, value)  # `fill` fires input events: the preview follows
    expect(page.locator("#preview-caption")).to_contain_text("8×8 cells on a 16×16 grid")
    preview = preview_cells(page)
    # A field the page does not write itself: built from the spec's option schema (GET /api/config).
    patience = page.locator("#option-early-stop-patience")
    expect(patience).to_have_attribute("placeholder", "off")
    expect(page.locator("#option-early-stop-patience-hint")).to_contain_text("has not improved")
    patience.fill("1000")
    page.locator("#upload-form details.advanced").screenshot(path=str(SCREENSHOTS / "train-advanced.png"))

    page.click("#submit-job")
    expect(page.locator("#upload-error")).to_be_hidden()
    expect(page).to_have_url(re.compile(r"#jobs$"))
    card = page.locator(".job").first
    expect(card.locator(".badge")).to_have_text("succeeded", timeout=120_000)
    job_id = card.get_attribute("data-job-id")
    assert page.evaluate("() => { const p = document.querySelector('.job progress'); return p.value === p.max; }")
    expect(card.locator(".job-numbers")).to_contain_text("30 / 30 it")
    record = stack.http.get(f"{stack.api_url}/api/jobs/{job_id}", timeout=10).json()
    assert record["options"]["early_stop_patience"] == 1000
    expect(card.locator(".job-numbers")).to_contain_text(re.compile(r"trained \d+s on cpu"))  # wall time, device
    expect(card.locator("[data-action=cancel]")).to_be_hidden()
    # The server's processed target is shown, and the browser's preview agreed with it.
    expect(card.locator("img.job-target")).to_have_js_property("naturalWidth", 16)
    expect(card.locator("img.job-preview")).to_have_js_property("naturalWidth", 16)  # the grown model
    server_target = on_white(stack.http.get(f"{stack.api_url}/api/jobs/{job_id}/target.png", timeout=10).content)
    assert np.abs(cell_centres(preview, server_target) - server_target).max() <= 2, "the preview is not the target"

    # The loss chart has a curve (painted pixels) and the model file downloads and loads.
    expect(card.locator(".job-numbers")).to_contain_text("loss")
    expect(card.get_by_role("img", name="Loss over iterations, log scale")).to_have_count(1)
    chart_painted = page.evaluate("""() => {
      const c = document.querySelector('.job .loss-chart');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 200 && d[i] < 100) n++;
      return n; }""")
    assert chart_painted > 20, "no loss curve drawn"
    href = card.locator("[data-action=download]").get_attribute("href")
    download = page.request.get(href)
    assert download.ok
    loaded = modelfile.from_bytes(download.body())
    assert loaded.info.iterations == 30


def test_follow_and_cancel_a_running_job(page, stack, tmp_path):
    """A long job shows live progress (it/s, ETA, loss curve), streams its checkpoints as they come,
    and stops when cancelled from its card."""
    image = tmp_path / "apple.png"
    heart_png(image)
    open_app(page, "train")
    page.set_input_files("#image-input", str(image))
    page.check("#budget-paper")  # a set number of iterations, not a time budget
    page.click("#upload-form details.advanced summary")
    for selector, value in {**TINY, "#iterations": "5000", "#name": "long apple"}.items():
        page.fill(selector, value)
    page.click("#submit-job")
    expect(page).to_have_url(re.compile(r"#jobs$"))
    card = page.locator(".job", has_text="long apple")
    expect(card.locator(".badge")).to_have_text("running", timeout=60_000)
    # Progress arrives by polling: the bar and the numbers move on their own.
    page.wait_for_function("""() => {
      const card = [...document.querySelectorAll('.job')].find((c) => c.textContent.includes('long apple'));
      return card && card.querySelector('progress').value >= 60;
    }""", timeout=60_000)
    expect(card.locator(".job-numbers")).to_contain_text("it/s")
    expect(card.locator(".job-numbers")).to_contain_text("ETA")
    screenshot(page, "jobs")

    # Watching a job while it trains: each new checkpoint regrows the stream from the seed, and says so.
    job_id = card.get_attribute("data-job-id")
    card.locator("[data-action=watch]").click()
    expect(page.locator("#model-select")).to_have_value(job_id)
    regrown = "Regrown from the seed with the checkpoint at iteration"
    expect(page.locator("#watch-status")).to_contain_text(regrown, timeout=30_000)
    page.go_back()
    expect(page.locator("#view-jobs")).to_be_visible()

    card.locator("[data-action=cancel]").click()
    expect(card.locator(".badge")).to_have_text("cancelled", timeout=30_000)
    expect(card.locator("[data-action=cancel]")).to_be_hidden()
    # The last checkpoint is kept and downloadable.
    download = page.request.get(card.locator("[data-action=download]").get_attribute("href"))
    assert download.ok
    assert 0 < modelfile.from_bytes(download.body()).info.iterations < 5000


def test_invalid_upload_shows_the_api_message(page, stack):
    """A text file named .png, dropped on the drop zone: the API's `detail` appears by the form."""
    text = b"this is not an image, just text\n" * 4
    api = stack.http.post(f"{stack.api_url}/api/jobs", files={"image": ("notes.png", text, "image/png")}, timeout=10)
    assert 400 <= api.status_code < 500
    message = api.json()["detail"]
    assert isinstance(message, str) and message

    open_app(page, "train")
    page.evaluate("""(content) => {
      const data = new DataTransfer();
      data.items.add(new File([content], 'notes.png', {type: 'image/png'}));
      const zone = document.getElementById('drop-zone');
      for (const type of ['dragenter', 'dragover', 'drop']) {
        zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
      }
    }""", text.decode())
    expect(page.locator("#file-name")).to_contain_text("notes.png")
    page.click("#submit-job")
    error = page.locator("#upload-error")
    expect(error).to_be_visible()
    expect(error).to_have_text(message)
    expect(page).to_have_url(f"{stack.api_url}/#train")  # stays on the form
    screenshot(page, "train-error")


def test_access_token_for_a_protected_server(page, stack, tmp_path):
    """With NCA_ACCESS_TOKEN set, the form asks for the token and sends it to create and cancel jobs."""
    api = Server("backend.api.main:app", free_port(), {**stack.api.env, "NCA_ACCESS_TOKEN": "s3cret"},
                 tmp_path / "api-token.log").start()
    try:
        image = tmp_path / "apple.png"
        heart_png(image)
        page.goto(f"http://127.0.0.1:{api.port}/#train")
        page.wait_for_selector("body[data-ready=true]")
        expect(page.locator("#access-token")).to_be_visible()
        page.set_input_files("#image-input", str(image))
        page.check("#budget-paper")  # a set number of iterations, not a time budget
        page.click("#upload-form details.advanced summary")
        for selector, value in {**TINY, "#iterations": "5000", "#name": "token apple"}.items():
            page.fill(selector, value)
        page.click("#submit-job")
        expect(page.locator("#upload-error")).to_contain_text("requires an access token")
        expect(page.locator("#access-token")).to_be_focused()

        page.fill("#access-token", "s3cret")
        page.click("#submit-job")
        expect(page).to_have_url(re.compile(r"#jobs$"))
        card = page.locator(".job", has_text="token apple")
        card.locator("[data-action=cancel]").click()
        expect(card.locator(".badge")).to_have_text("cancelled", timeout=30_000)

        page.reload()  # asked once: the token is still there on the next visit
        page.wait_for_selector("body[data-ready=true]")
        page.click("[data-view-link=train]")
        expect(page.locator("#access-token")).to_have_value("s3cret")
    finally:
        api.stop()


def test_choosing_another_image_replaces_the_preview(page, stack, tmp_path):
    """The second choice wins and the first decoded image is released; the preview keeps redrawing."""
    first, second = tmp_path / "wide.png", tmp_path / "tall.png"
    Image.new("RGBA", (80, 40), (200, 30, 30, 255)).save(first)
    Image.new("RGBA", (20, 40), (30, 30, 200, 255)).save(second)
    open_app(page, "train")
    page.set_input_files("#image-input", str(first))
    caption = page.locator("#preview-caption")
    expect(caption).to_contain_text("40×20 cells on a 72×52 grid")
    page.set_input_files("#image-input", str(second))
    expect(caption).to_contain_text("20×40 cells on a 52×72 grid")
    page.fill("#target-size", "20")  # redraws from the kept image (a closed one would throw)
    page.dispatch_event("#target-size", "input")
    expect(caption).to_contain_text("10×20 cells on a 42×52 grid")
    cells = preview_cells(page)
    assert (cells[..., 2] > cells[..., 0] + 100).any()  # blue: the second image, not the first
