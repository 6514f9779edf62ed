"""Rooms across replicas: the real Caddy with deploy/Caddyfile in front of two stream replicas, an API and a
Redis of their own. A room's joiners all reach the one replica that plays it; 30 participants get the same
frames at the room's rate; when that replica is killed (-9) they reconnect, as the page does, and the pattern
goes on from the last snapshot on the other replica; when the killed one comes back and the proxy sends
joiners to it again, the room moves there whole (never two copies).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
import websockets

from backend.config import Settings
from backend.run import caddy_binary, proxy_service
from backend.storage.embedded_redis import EmbeddedRedis, free_port, start_redis
from tests.conftest import SERVICE_ENV, wait_for
from tests.helpers import REPO_ROOT, UvicornServer, stop_process
from tests.stream.client import Frame, Viewer

EXAMPLE = "example-heart"  # 36 x 36, grows in ~60 steps
RETRY_MIN, RETRY_MAX = 0.5, 10.0  # frontend/js/stream.js's backoff
FAIL_DURATION = 10.0  # deploy/Caddyfile: a replica that refused a connection is left out this long
SNAPSHOT_EVERY = 1.0
LEASE_SECONDS = 2.0
PARTICIPANTS = 30


@dataclass
class RoomStack:
    redis: EmbeddedRedis
    api: UvicornServer
    streams: list[UvicornServer]
    proxy: subprocess.Popen
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def room_url(self, room: dict) -> str:
        return f"ws://127.0.0.1:{self.port}{room['stream_path']}"

    def create(self, model: str = EXAMPLE) -> dict:
        answer = httpx.post(f"{self.base}/api/rooms", json={"model": model}, timeout=10)
        assert answer.status_code == 201, answer.text
        return answer.json()

    def hosting(self, room: dict) -> dict[int, int]:
        """Replica index -> participants, for the replicas that play `room` (asked past the proxy)."""
        found = {}
        for i, stream in enumerate(self.streams):
            if stream.alive:
                rooms = stream.health().get("rooms", {})
                if room["id"] in rooms:
                    found[i] = rooms[room["id"]]["participants"]
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoomStack]:
    root = tmp_path_factory.mktemp("rooms-stack")
    models = root / "models"
    models.mkdir()
    shutil.copy(REPO_ROOT / "models" / "heart.safetensors", models)
    redis = start_redis(data_dir=root / "redis")
    env = {**os.environ, **SERVICE_ENV, "REDIS_URL": redis.url, "NCA_MODELS_DIR": str(models), "NCA_DEVICE": "cpu",
           "NCA_STREAM_TORCH_THREADS": "1", "NCA_ROOM_SNAPSHOT_EVERY": str(SNAPSHOT_EVERY),
           "NCA_ROOM_LEASE_SECONDS": str(LEASE_SECONDS), "NCA_ROOMS_PER_CLIENT": "10"}
    api = UvicornServer("backend.api.main:app", free_port(), env, root / "api.log")
    streams = [UvicornServer("backend.stream.app:app", free_port(), env, root / f"stream{i}.log") for i in range(2)]
    port = free_port()
    proxy = proxy_service(Settings(proxy_port=port, data_dir=root / "data"), caddy_binary())
    proxy.env.update(NCA_PROXY_API_ADDRESSES=f"127.0.0.1:{api.port}",
                     NCA_PROXY_STREAM_ADDRESSES=" ".join(f"127.0.0.1:{s.port}" for s in streams))
    process = None
    try:
        for server in [*streams, api]:
            server.start()
        with (root / "proxy.log").open("wb") as log:
            process = subprocess.Popen(proxy.command, cwd=REPO_ROOT, env={**os.environ, **proxy.env}, stdout=log,
                                       stderr=subprocess.STDOUT)
        stack = RoomStack(redis, api, streams, process, port)
        wait_for(lambda: _ok(f"{stack.base}/api/health"), 30, what="the proxy")
        yield stack
    finally:
        if process is not None:
            stop_process(process)
        for server in [api, *streams]:
            server.stop()
        redis.stop()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


async def _join(url: str, deadline: float, host_token: str | None = None) -> Viewer:
    """As frontend/js/stream.js does after a drop: try again with backoff (0.5 s doubling to 10 s); the host
    says so with its first command, as room.js does on every (re)connect."""
    wait = RETRY_MIN
    while True:
        try:
            ws = await websockets.connect(url, compression=None, open_timeout=10, max_queue=None, close_timeout=1)
            if host_token is not None:
                await ws.send(json.dumps({"cmd": "host", "token": host_token}))
            return Viewer(ws)
        except (OSError, websockets.InvalidHandshake, TimeoutError):
            assert time.monotonic() < deadline, "could not (re)join the room through the proxy"
        await asyncio.sleep(wait)
        wait = min(RETRY_MAX, wait * 2)


async def _record(viewer: Viewer, seconds: float) -> dict[int, str]:
    """CA step -> digest of the frame's bytes, for every frame that arrives within `seconds`."""
    seen, deadline = {}, time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(viewer.ws.recv(), left)
        except TimeoutError:
            break
        if isinstance(message, bytes):
            step = int.from_bytes(message[4:8], "little")
            seen[step] = hashlib.blake2b(message[4:], digest_size=16).hexdigest()  # all but the frame number
    return seen


def test_thirty_participants_on_two_replicas_get_the_same_frames_at_the_rooms_rate(stack: RoomStack) -> None:
    room = stack.create()

    async def scenario() -> tuple[list[dict[int, str]], dict[int, int]]:
        async with AsyncExitStack() as exits:
            deadline = time.monotonic() + 60
            viewers = [await _join(stack.room_url(room), deadline, room["host_token"] if i == 0 else None)
                       for i in range(PARTICIPANTS)]
            for viewer in viewers:
                exits.push_async_callback(viewer.ws.close)
            await asyncio.gather(*(v.event("room", timeout=20) for v in viewers))
            hosting = await asyncio.to_thread(stack.hosting, room)
            await asyncio.gather(*(_record(v, 1.0) for v in viewers))  # settle: the backlog of the joins
            return await asyncio.gather(*(_record(v, 3.0) for v in viewers)), hosting

    seen, hosting = asyncio.run(scenario())
    assert list(hosting.values()) == [PARTICIPANTS], f"the room is played on {hosting}, not on one replica"
    steps = set().union(*seen)
    made = max(steps) - min(steps) + 1  # the room advances one CA step per frame (steps_per_frame 1)
    assert made >= 3.0 * 30 * 0.6, f"the room made {made} frames in 3 s (30 fps asked)"
    counts = sorted(len(s) for s in seen)
    assert counts[0] >= 0.8 * made, f"some participants fell behind the room's {made} frames: {counts}"
    for step in steps:
        assert len({s[step] for s in seen if step in s}) == 1, f"participants got different frames of step {step}"
    print(f"\n30 participants: the room made {made} frames in 3 s; per participant {counts[0]}-{counts[-1]}")


def test_a_killed_hosting_replica_hands_the_room_on_from_its_snapshot(stack: RoomStack) -> None:
    room = stack.create()

    async def scenario() -> None:
        async with AsyncExitStack() as exits:
            deadline = time.monotonic() + 60
            viewers = [await _join(stack.room_url(room), deadline, room["host_token"] if i == 0 else None)
                       for i in range(3)]
            for viewer in viewers:
                exits.push_async_callback(viewer.ws.close)
            grown = await viewers[1].frame_at_step(120)
            assert grown.coverage > 0.1
            await asyncio.sleep(SNAPSHOT_EVERY * 1.5)  # a snapshot of the grown pattern is in Redis
            before = (await viewers[1].frame()).step
            hosting = await asyncio.to_thread(stack.hosting, room)
            assert len(hosting) == 1
            victim = stack.streams[next(iter(hosting))]
            victim.process.kill()  # kill -9: no snapshot on the way out
            killed_at = time.monotonic()
            await asyncio.to_thread(victim.process.wait)
            again: list[Frame] = []
            fresh_viewers: list[Viewer] = []
            for viewer in viewers:
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        await viewer.next(timeout=5)
                token = room["host_token"] if viewer is viewers[0] else None
                fresh = await _join(stack.room_url(room), time.monotonic() + 30, token)
                exits.push_async_callback(fresh.ws.close)
                fresh_viewers.append(fresh)
                again.append(await fresh.frame(timeout=20))
                if viewer is viewers[0]:
                    failover = time.monotonic() - killed_at
                    host = fresh
            # It goes on from the snapshot, not from the seed: at most a snapshot interval (and a few
            # frames of the kill) behind where it was, and the grown pattern is there.
            assert again[0].step >= before - SNAPSHOT_EVERY * 30 - 30, (before, again[0].step)
            assert again[0].coverage > 0.5 * grown.coverage
            print(f"\nfailover: first frame {failover:.2f} s after kill -9; step {before} -> {again[0].step}")
            assert failover < LEASE_SECONDS + 5
            # The host is still the host on the new replica.
            await host.send(cmd="pause")
            assert (await host.event("state"))["paused"] is True
            await host.send(cmd="play")

            # The killed replica comes back; once the proxy tries it again, new joiners hash to it and the
            # room moves there whole: its players are told to reconnect (1012) and do.
            victim.start()
            await asyncio.sleep(FAIL_DURATION + 1)
            late = await _join(stack.room_url(room), time.monotonic() + 30)
            exits.push_async_callback(late.ws.close)
            await late.frame(timeout=20)
            moved = 0
            for fresh in fresh_viewers:  # those told to move reconnect, as the page does on 1012
                try:
                    await fresh.quiet(0.3)
                    await fresh.frame(timeout=3)
                except websockets.ConnectionClosed as closed:
                    assert closed.rcvd is not None and closed.rcvd.code == 1012, closed
                    moved += 1
                    rejoined = await _join(stack.room_url(room), time.monotonic() + 30)
                    exits.push_async_callback(rejoined.ws.close)
                    await rejoined.frame(timeout=20)
            hosting = await asyncio.to_thread(stack.hosting, room)
            assert list(hosting.values()) == [4], f"the room is not whole on one replica: {hosting}"
            print(f"after the restart: {moved} participants moved, the room plays on replica {hosting}")

    asyncio.run(scenario())


CANVAS_PIXELS_JS = """([selector, box]) => {
  const canvas = document.querySelector(selector);
  const [x0, y0, x1, y1] = box.map((v, i) => Math.floor(v * (i % 2 ? canvas.height : canvas.width)));
  return Array.from(canvas.getContext('2d').getImageData(x0, y0, x1 - x0, y1 - y0).data);
}"""
# RGB at the centre of each of n x n cells: canvases of different sizes (desktop, phone) compared cell by cell.
CELLS_JS = """(n) => {
  const canvas = document.getElementById('room-canvas');
  const ctx = canvas.getContext('2d');
  const cells = [];
  for (let y = 0; y < n; y++) for (let x = 0; x < n; x++) {
    const px = Math.floor((x + 0.5) * canvas.width / n), py = Math.floor((y + 0.5) * canvas.height / n);
    const d = ctx.getImageData(px, py, 1, 1).data;
    cells.push([d[0], d[1], d[2]]);
  }
  return cells;
}"""
CENTRE = (0.35, 0.35, 0.65, 0.65)  # of the canvas: where the heart is and where the participant erases


def _step(page) -> int:
    return int(page.inner_text("#room-step"))


def test_two_browsers_in_one_room_see_each_others_erase_and_the_hosts_pause(stack: RoomStack) -> None:
    """Real chromium, two contexts through the proxy: the host opens a room from the Watch view; a phone joins
    with the code; an erase on the phone shows in the host's pixels; only the host has the controls, and its
    pause stops both."""
    from tests.frontend.conftest import CHROMIUM, CHROMIUM_ARGS
    from tests.frontend.pages import DESKTOP, PHONE, open_app, painted, screenshot

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            host = browser.new_context(viewport=DESKTOP, base_url=stack.base).new_page()
            errors: list[str] = []
            host.on("pageerror", lambda e: errors.append(str(e)))
            open_app(host, f"watch/{EXAMPLE}")
            expect(host.locator("#model-select")).to_have_value(EXAMPLE)
            host.click("#open-room")
            host.wait_for_url("**/room.html?code=*#host=*")
            expect(host.locator("#host-panel")).to_be_visible(timeout=20_000)
            host.wait_for_function("() => document.getElementById('room-qr').naturalWidth > 100")
            code = host.inner_text("#room-code")
            host.wait_for_function("() => Number(document.getElementById('room-step').textContent) > 80")

            phone_context = browser.new_context(viewport=PHONE, base_url=stack.base, device_scale_factor=2,
                                                is_mobile=True, has_touch=True)
            phone = phone_context.new_page()
            phone.on("pageerror", lambda e: errors.append(str(e)))
            phone.goto("/room.html")  # no code in the link: type it
            phone.fill("#code-input", code.lower())
            phone.click("#join-form button")
            phone.wait_for_function("() => Number(document.getElementById('room-step').textContent) > 80")
            expect(host.locator("#room-people")).to_have_text("2")
            expect(phone.locator("#host-panel")).to_be_hidden()  # a participant has no pause, reset, close

            host.click("#host-pause")
            expect(phone.locator("#host-pause")).to_have_text("Play")  # its state event came (panel hidden)
            time.sleep(0.5)
            frozen = (_step(host), _step(phone))
            time.sleep(1.0)
            assert (_step(host), _step(phone)) == frozen, "the host's pause did not stop both"
            assert frozen[0] == frozen[1], "host and participant show different steps of one room"
            assert painted(host, "#room-canvas", CENTRE) > 0.3, "the heart has not grown"

            box = phone.locator("#room-canvas").bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            phone.mouse.move(cx - 60, cy)
            phone.mouse.down()
            for dx in range(-60, 61, 10):
                phone.mouse.move(cx + dx, cy)
                time.sleep(0.12)
            phone.mouse.up()
            # The host's pixels show the phone's erase (paused: no step, so both canvases hold the same frame).
            host.wait_for_function(
                "(js) => { const d = eval(js)(['#room-canvas', [0.42, 0.47, 0.58, 0.53]]);"
                " return d.every((v, i) => i % 4 === 3 || v > 245); }", arg=CANVAS_PIXELS_JS, timeout=10_000)
            host_cells, phone_cells = host.evaluate(CELLS_JS, 36), phone.evaluate(CELLS_JS, 36)
            assert host_cells == phone_cells, "the two browsers show different cells"
            assert host_cells[18 * 36 + 18] == [255, 255, 255] and len({tuple(c) for c in host_cells}) > 5
            screenshot(host, "room-host-after-phone-erase")
            screenshot(phone, "room-phone-participant")

            host.click("#host-pause")  # play
            for page in (host, phone):
                page.wait_for_function(f"() => Number(document.getElementById('room-step').textContent) > "
                                       f"{frozen[0] + 10}")
            host.click("#host-close")
            expect(phone.locator("#room-connection")).to_have_text("closed", timeout=10_000)
            expect(phone.locator("#room-status")).to_contain_text("closed by its host")
            assert not errors, errors
        finally:
            browser.close()
