"""Helpers for driving the app in a Playwright page: open a view, read canvas pixels, screenshots."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

# Fraction of "painted" (not white) pixels of a canvas inside a box given in fractions of its size.
# The stream renders cells on white (docs/nca-spec.md), so empty cells are pure white.
PAINTED_FRACTION_JS = """([selector, box]) => {
  const canvas = document.querySelector(selector);
  const [x0, y0, x1, y1] = box;
  const left = Math.floor(x0 * canvas.width), top = Math.floor(y0 * canvas.height);
  const w = Math.max(1, Math.floor((x1 - x0) * canvas.width)), h = Math.max(1, Math.floor((y1 - y0) * canvas.height));
  const data = canvas.getContext('2d').getImageData(left, top, w, h).data;
  let painted = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] < 245 || data[i + 1] < 245 || data[i + 2] < 245) painted++;
  }
  return painted / (w * h);
}"""
WHOLE = (0.0, 0.0, 1.0, 1.0)


def open_app(page, view: str = "train") -> None:
    page.goto(f"/#{view}")
    page.wait_for_selector("body[data-ready=true]")


def painted(page, selector: str = "#stream-canvas", box: tuple[float, float, float, float] = WHOLE) -> float:
    return page.evaluate(PAINTED_FRACTION_JS, [selector, list(box)])


def wait_painted(page, predicate: str, box: tuple[float, float, float, float] = WHOLE,
                 selector: str = "#stream-canvas", timeout: float = 20_000) -> float:
    """Wait (checking every animation frame) until `predicate` holds for the painted fraction `p`."""
    try:
        page.wait_for_function(f"(args) => {{ const p = ({PAINTED_FRACTION_JS})(args); return {predicate}; }}",
                               arg=[selector, list(box)], polling="raf", timeout=timeout)
    except PlaywrightTimeoutError:
        now = painted(page, selector, box)
        step = page.inner_text("#ca-step")
        raise AssertionError(f"{predicate} never held in {box} within {timeout / 1000:g} s: "
                             f"p is {now:.3f} at CA step {step}") from None
    return painted(page, selector, box)


def set_range(page, selector: str, value: int) -> None:
    """Move a slider as a user would (value change plus an input event)."""
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def ca_step(page) -> int:
    """The Watch view's CA step counter."""
    return int(page.inner_text("#ca-step"))


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def owner_of(page) -> str:
    """The owner token of the page's browser context (its `nca_owner` cookie): jobs made for it show on its page."""
    return next(c["value"] for c in page.context.cookies() if c["name"] == "nca_owner")


def act_as(page, stack, token: str) -> None:
    """Make the page's browser context (and `stack.http`) the owner `token`: its jobs become the page's."""
    page.context.add_cookies([{"name": "nca_owner", "value": token, "url": stack.api_url, "httpOnly": True,
                               "sameSite": "Lax"}])
    stack.owner_token = token


def trained_job(stack, token: str | None = None, timeout: float = 120, **options: object) -> str:
    """A tiny job (TINY_TRAINING and `options`) trained to success by the stack's worker, owned by `token`
    (default: the current test's owner); its id."""
    import httpx

    from tests.conftest import TINY_TRAINING, png_image, wait_for

    headers = {"X-Owner-Token": token or stack.owner_token}
    fields = {k: str(v) for k, v in {**TINY_TRAINING, **options}.items()}
    response = httpx.post(f"{stack.api_url}/api/jobs", data=fields, headers=headers, timeout=30,
                          files={"image": ("square.png", png_image(), "image/png")})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    wait_for(lambda: httpx.get(f"{stack.api_url}/api/jobs/{job_id}", headers=headers, timeout=10
                               ).json()["status"] == "succeeded", timeout=timeout, what=f"job {options.get('name')!r}")
    return job_id
