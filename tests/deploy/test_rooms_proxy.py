"""Rooms across replicas: the real Caddy with deploy/Caddyfile in front of two stream replicas, an API and a
Redis of their own. A room's joiners all reach the one replica that plays it; 30 participants get the same
frames at the room's rate; when that replica is killed (-9) they reconnect, as the page does, and the pattern
goes on from the last snapshot on the other replica; when the killed one comes back and the proxy sends
joiners to it again, the room moves there whole (never two copies).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

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

    def room_url(self, room: dict, host: bool = False) -> str:
        return f"ws://127.0.0.1:{self.port}{room['stream_path']}" + (f"&host={room['host_token']}" if host else "")

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


async def _join(url: str, deadline: float) -> Viewer:
    """As frontend/js/stream.js does after a drop: try again with backoff (0.5 s doubling to 10 s)."""
    wait = RETRY_MIN
    while True:
        try:
            ws = await websockets.connect(url, compression=None, open_timeout=10, max_queue=None)
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
            viewers = [await _join(stack.room_url(room, host=i == 0), deadline) for i in range(PARTICIPANTS)]
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
            viewers = [await _join(stack.room_url(room, host=i == 0), deadline) for i in range(3)]
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
                fresh = await _join(stack.room_url(room, host=viewer is viewers[0]), time.monotonic() + 30)
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
