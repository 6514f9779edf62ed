"""The Train and Jobs views in a real browser against the real stack: upload, progress, errors."""

from __future__ import annotations

import io
import re

import httpx
import numpy as np
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from backend.nca import modelfile
from backend.storage.embedded_redis import free_port
from tests.frontend.conftest import Server
from tests.frontend.pages import open_app, screenshot

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


def test_upload_trains_to_success(page, stack, tmp_path):
    image = tmp_path / "apple.png"
    heart_png(image)
    open_app(page, "train")
    page.set_input_files("#image-input", str(image))
    # The preview mirrors the core: at the defaults 48x48 -> 40x40 cells with 16 empty cells around.
    expect(page.locator("#preview-caption")).to_contain_text("40×40 cells on a 72×72 grid")
    screenshot(page, "train")
    page.click("details.advanced summary")
    for selector, value in TINY.items():
        page.fill(selector, value)  # `fill` fires input events: the preview follows
    expect(page.locator("#preview-caption")).to_contain_text("8×8 cells on a 16×16 grid")
    preview = preview_cells(page)[..., :3]

    page.click("#submit-job")
    expect(page.locator("#upload-error")).to_be_hidden()
    expect(page).to_have_url(re.compile(r"#jobs$"))
    card = page.locator(".job").first
    expect(card.locator(".badge")).to_have_text("succeeded", timeout=120_000)
    job_id = card.get_attribute("data-job-id")
    assert page.evaluate("() => { const p = document.querySelector('.job progress'); return p.value === p.max; }")
    expect(card.locator(".job-numbers")).to_contain_text("30 / 30 it")
    expect(card.locator("[data-action=cancel]")).to_be_hidden()
    # The server's processed target is shown, and the browser's preview agreed with it.
    expect(card.locator("img.job-target")).to_have_js_property("naturalWidth", 16)
    expect(card.locator("img.job-preview")).to_have_js_property("naturalWidth", 16)  # the grown model
    server_target = on_white(httpx.get(f"{stack.api_url}/api/jobs/{job_id}/target.png", timeout=10).content)
    scale = preview.shape[0] // server_target.shape[0]
    assert preview.shape[:2] == (server_target.shape[0] * scale, server_target.shape[1] * scale)
    cells = preview[scale // 2::scale, scale // 2::scale].astype(int)
    assert np.abs(cells - server_target.astype(int)).mean() < 12, "the preview differs from the server's target"

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
    page.click("details.advanced summary")
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
    api = httpx.post(f"{stack.api_url}/api/jobs", files={"image": ("notes.png", text, "image/png")}, timeout=10)
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


def test_preview_sizes_match_pillow_thumbnail(page, stack):
    """The browser's target size follows Pillow's Image.thumbnail (used by the core) exactly."""
    sizes = [(100, 30), (30, 100), (20, 10), (41, 40), (1000, 999), (333, 7), (64, 64), (57, 200)]
    expected = []
    for width, height in sizes:
        img = Image.new("RGB", (width, height))
        img.thumbnail((40, 40))
        expected.append(list(img.size))
    open_app(page, "train")
    got = page.evaluate("""async (sizes) => {
      const { thumbnailSize } = await import('/js/target.js');
      return sizes.map(([w, h]) => thumbnailSize(w, h, 40));
    }""", sizes)
    assert got == expected


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
        page.click("details.advanced summary")
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
