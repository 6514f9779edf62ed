"""Rooms on one real stream replica: one CA for every participant, host-only controls, edits rate limited,
a slow participant dropped alone, unknown and closed rooms refused with their close codes.

Rooms are made with the real RoomStore in the real Redis (what POST /api/rooms does; tests/api/test_rooms.py
covers the API); participants are real websockets clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import websockets

from backend.storage.connection import connect
from backend.storage.embedded_redis import EmbeddedRedis
from backend.storage.rooms import Room, RoomNotFound, RoomStore
from backend.stream import protocol
from tests.stream.client import Frame, Viewer, watch
from tests.stream.conftest import RANDOM, StreamServer, _start
from tests.stream.jobs import HEART, TrainingJob, as_checkpoint


@pytest.fixture
def store(redis_server: EmbeddedRedis) -> Iterator[RoomStore]:
    client = connect(redis_server.url)
    yield RoomStore(client, idle_timeout=60, lease_seconds=3)
    client.close()


def room_url(server: StreamServer, room: Room) -> str:
    return f"ws://127.0.0.1:{server.port}/ws/stream?room={room.id}"


@contextlib.asynccontextmanager
async def join(server: StreamServer, room: Room, token: str | None = None) -> AsyncIterator[Viewer]:
    """A participant; with `token`, the host (its first command says so, and a `room` event confirms)."""
    async with watch(room_url(server, room)) as viewer:
        if token is not None:
            await viewer.ws.send(json.dumps({"cmd": "host", "token": token}))
            while not (await viewer.event("room"))["host"]:
                pass
        yield viewer


async def same_step(a: Viewer, b: Viewer, timeout: float = 10.0) -> tuple[Frame, Frame]:
    """A frame of the same CA step from each viewer."""
    fa = await a.frame(timeout)
    fb = await b.frame(timeout)
    while fa.step != fb.step:
        if fa.step < fb.step:
            fa = await a.frame(timeout)
        else:
            fb = await b.frame(timeout)
    return fa, fb


def test_participants_share_one_ca_and_see_each_others_erase(server: StreamServer, store: RoomStore) -> None:
    room, token = store.create(RANDOM, "test-share", 100)

    async def run() -> None:
        async with join(server, room, token) as host, watch(room_url(server, room)) as guest:
            joined = await guest.event("room")
            assert joined["code"] == room.code and joined["host"] is False and joined["participants"] >= 1
            while (await host.event("participants"))["count"] != 2:  # the first says 1: the host itself
                pass
            fa, fb = await same_step(host, guest)
            assert fa.rgba.tobytes() == fb.rgba.tobytes(), "two participants of one room see different cells"
            await guest.frame_at_step(30)
            await guest.send(cmd="erase", x=20, y=24, r=10)
            strokes = (await host.event("strokes"))["strokes"]
            assert strokes == [{"who": joined["you"], "cmd": "erase", "x": 20, "y": 24, "r": 10}]
            # In the host's frames the circle is empty (the random model's cells are alive everywhere near it).
            while True:
                frame = await host.frame()
                if frame.rgba[20:29, 16:25, 3].max() == 0:
                    break
            fa, fb = await same_step(host, guest)
            assert fa.rgba.tobytes() == fb.rgba.tobytes()

    asyncio.run(run())


def test_only_the_host_pauses_and_the_pause_stops_everyone(server: StreamServer, store: RoomStore) -> None:
    room, token = store.create(RANDOM, "test-pause", 100)

    async def run() -> None:
        async with join(server, room, token) as host, watch(room_url(server, room)) as guest:
            await guest.frame_at_step(3)
            await guest.send(cmd="pause")
            error = await guest.event("error")
            assert "only the room's host can pause" in error["message"]
            assert len(await guest.quiet(0.5)) > 5, "a guest's pause stopped the room"
            await host.send(cmd="pause")
            assert (await guest.event("state"))["paused"] is True
            await asyncio.gather(host.quiet(0.5), guest.quiet(0.5))  # what was sent before the pause
            after = await asyncio.gather(host.quiet(1.0), guest.quiet(1.0))
            assert after == [[], []], "frames kept coming after the host paused"
            await guest.send(cmd="reset")
            assert "only the room's host can reset" in (await guest.event("error"))["message"]
            await host.send(cmd="play")
            await guest.frame()
            await host.send(cmd="rotate", angle=90)
            await host.send(cmd="speed", fps=12)
            while (state := await guest.event("state"))["fps"] != 12:
                pass
            assert state["angle"] == 90 and state["paused"] is False

    asyncio.run(run())


def test_edit_flood_is_throttled_and_the_room_plays_on(server: StreamServer, store: RoomStore) -> None:
    room, _ = store.create(RANDOM, "test-flood", 100)

    async def run() -> None:
        async with watch(room_url(server, room)) as flooder, watch(room_url(server, room)) as other:
            await other.frame()
            for i in range(60):
                await flooder.ws.send(f'{{"cmd": "seed", "x": {i % 40}, "y": 5}}')
            throttled = await flooder.event("throttled")
            assert "at most 10 edits per second" in throttled["message"]
            assert len(await other.quiet(1.0)) > 10, "the flood slowed the room down for the others"
            assert len(await flooder.quiet(0.5)) > 3, "the flooder was dropped"

    asyncio.run(run())


def test_a_stalled_participant_is_dropped_without_slowing_the_others(server: StreamServer, store: RoomStore) -> None:
    """The `server` fixture closes a client that accepts no frame for 2 s (NCA_STREAM_STALL_TIMEOUT)."""
    room, _ = store.create(RANDOM, "test-stall", 100)

    async def run() -> None:
        async with watch(room_url(server, room)) as reader:
            stalled = socket.create_connection(("127.0.0.1", server.port))
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.sendall(f"GET /ws/stream?room={room.id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
            try:
                await reader.event("participants")
                counts = []
                for _ in range(8):  # the stalled one never reads: within ~2 s + the close wait it is gone
                    frames = await reader.quiet(1.0)
                    assert len(frames) >= 15, f"the reader got {len(frames)} frames in a second"
                    counts += [e["count"] for e in reader.events if e["type"] == "participants"]
                    reader.events.clear()
                assert counts and counts[-1] == 1, f"the stalled participant was not dropped: {counts}"
            finally:
                stalled.close()

    asyncio.run(run())


def test_unknown_and_closed_rooms_get_their_close_codes(server: StreamServer, store: RoomStore) -> None:
    room, token = store.create(RANDOM, "test-close", 100)

    async def run() -> None:
        async with watch(f"ws://127.0.0.1:{server.port}/ws/stream?room={'0' * 32}") as v:
            assert "no open room" in (await v.event("error"))["message"]
            assert (await v.closed()).code == protocol.CLOSE_UNKNOWN_MODEL
        async with watch(room_url(server, room) + f"&model={RANDOM}") as v:
            assert (await v.closed()).code == protocol.CLOSE_BAD_REQUEST
        async with watch(room_url(server, room) + f"&host={token}") as v:  # a token in a URL lands in logs
            assert "not in the URL" in (await v.event("error"))["message"]
            assert (await v.closed()).code == protocol.CLOSE_BAD_REQUEST
        async with watch(room_url(server, room)) as v:
            await v.send(cmd="host", token="guess")
            assert "not this room's host token" in (await v.event("error"))["message"]
            await v.send(cmd="close")
            assert "only the room's host can close" in (await v.event("error"))["message"]
        async with join(server, room, token) as host, watch(room_url(server, room)) as guest:
            await guest.frame()
            await guest.send(cmd="close")
            assert "only the room's host can close" in (await guest.event("error"))["message"]
            await host.send(cmd="close")
            for v in (guest, host):
                close = await v.closed()
                assert close.code == protocol.CLOSE_ROOM_CLOSED and "closed by its host" in close.reason
        async with watch(room_url(server, room)) as v:
            assert (await v.closed()).code == protocol.CLOSE_UNKNOWN_MODEL

    asyncio.run(run())


def test_a_room_closed_through_the_store_ends_within_a_second(server: StreamServer, store: RoomStore) -> None:
    room, _ = store.create(RANDOM, "test-delete", 100)

    async def run() -> None:
        async with watch(room_url(server, room)) as guest:
            await guest.frame()
            store.close(room)  # what DELETE /api/rooms/{id} does
            close = await guest.closed(timeout=3.0)
            assert close.code == protocol.CLOSE_ROOM_CLOSED

    asyncio.run(run())


def test_the_host_switches_the_model_for_everyone(server: StreamServer, store: RoomStore, lizard: str) -> None:
    room, token = store.create(RANDOM, "test-switch", 100)

    async def run() -> None:
        async with join(server, room, token) as host, watch(room_url(server, room)) as guest:
            await guest.frame()
            await guest.send(cmd="model", model=lizard)
            assert "only the room's host" in (await guest.event("error"))["message"]
            await host.send(cmd="model", model="example-nope")
            assert "unknown model 'example-nope'" in (await host.event("error"))["message"]
            await host.send(cmd="model", model=lizard)
            assert (await guest.event("model"))["id"] == lizard
            frame = await guest.frame()
            while frame.width != 72:
                frame = await guest.frame()
            assert store.get(room.id).model == lizard

    asyncio.run(run())


def test_frames_are_one_tick_for_the_whole_room(server: StreamServer, store: RoomStore) -> None:
    """Eight participants cost one session: /health counts one per room, and they all get the same bytes."""
    room, _ = store.create(RANDOM, "test-one-tick", 100)

    async def run() -> None:
        urls = [room_url(server, room)] * 8
        async with contextlib_all(urls) as viewers:
            await asyncio.gather(*(v.frame_at_step(10) for v in viewers))
            health = server.health()
            # One engine session per room (rooms that just emptied linger a few seconds), eight participants.
            assert health["sessions"] == len(health["rooms"]) and health["rooms"][room.id]["participants"] == 8
            seen = await asyncio.gather(*(v.quiet(1.0) for v in viewers))
            assert all(len(frames) >= 15 for frames in seen), [len(frames) for frames in seen]
            assert identical_frames(seen) >= 10

    asyncio.run(run())


class contextlib_all:  # noqa: N801 (used like a function)
    """Open several viewers at once."""

    def __init__(self, urls: list[str]) -> None:
        self.urls, self.sockets = urls, []

    async def __aenter__(self) -> list[Viewer]:
        self.sockets = [await websockets.connect(u, compression=None, close_timeout=1) for u in self.urls]
        return [Viewer(ws) for ws in self.sockets]

    async def __aexit__(self, *_: object) -> None:
        await asyncio.gather(*(ws.close() for ws in self.sockets))



def identical_frames(seen: list[list[Frame]]) -> int:
    """How many CA steps every viewer got a frame of; asserts each such frame is the same bytes for all."""
    by_step = [{f.step: f.rgba.tobytes() for f in frames} for frames in seen]
    common = set.intersection(*(set(steps) for steps in by_step))
    for step in common:
        assert len({steps[step] for steps in by_step}) == 1, f"viewers got different frames of step {step}"
    return len(common)


@pytest.fixture(scope="module")
def small_rooms(models_dir, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[StreamServer]:
    """A replica with tiny room limits: 2 participants, 2 s of idleness."""
    srv = _start(models_dir, redis_server, tmp_path_factory.mktemp("stream-rooms") / "stream.log",
                 room_max_participants=2, room_idle_timeout=2)
    yield srv
    srv.stop()


def test_a_full_room_refuses_the_next_participant(small_rooms: StreamServer, store: RoomStore) -> None:
    room, _ = store.create(RANDOM, "test-full", 100)

    async def run() -> None:
        async with watch(room_url(small_rooms, room)) as a, watch(room_url(small_rooms, room)) as b:
            await asyncio.gather(a.frame(), b.frame())
            async with watch(room_url(small_rooms, room)) as c:
                assert "the room is full (max 2 participants)" in (await c.event("error"))["message"]
                assert (await c.closed()).code == protocol.CLOSE_TRY_AGAIN_LATER
            assert len(await a.quiet(0.3)) > 3, "the refusal disturbed the room"

    asyncio.run(run())


def test_an_idle_room_ends_by_itself(small_rooms: StreamServer, store: RoomStore) -> None:
    room, _ = store.create(RANDOM, "test-idle", 100)

    async def run() -> None:
        async with watch(room_url(small_rooms, room)) as watcher:
            await watcher.frame()
            await asyncio.sleep(1.0)
            await watcher.send(cmd="erase", x=5, y=5, r=2)  # activity: the room lives on past 2 s
            await asyncio.sleep(1.5)
            assert len(await watcher.quiet(0.3)) > 3
            close = await watcher.closed(timeout=5.0)  # then nobody does anything for 2 s
            assert close.code == protocol.CLOSE_ROOM_CLOSED and "nobody did anything for 2 s" in close.reason
        with pytest.raises(RoomNotFound):
            store.get(room.id)

    asyncio.run(run())


def test_a_room_nobody_joins_expires_in_redis(redis_server: EmbeddedRedis) -> None:
    client = connect(redis_server.url)
    short = RoomStore(client, idle_timeout=0.3)
    room, _ = short.create(RANDOM, "test-expiry", 100)
    assert short.by_code(room.code).id == room.id
    time.sleep(0.5)
    with pytest.raises(RoomNotFound):
        short.by_code(room.code)
    with pytest.raises(RoomNotFound):
        short.get(room.id)
    client.close()


def test_a_new_checkpoint_reaches_everyone_in_a_room_once(server: StreamServer, store: RoomStore,
                                                         redis_server: EmbeddedRedis) -> None:
    """A room on a job still training: its next checkpoint is swapped in for the room's one state; every
    participant gets one `reloaded` and the room regrows from the seed."""
    job = TrainingJob(redis_server.url, name="room job", total=1000)
    try:
        job.checkpoint(as_checkpoint(HEART, 100, 0.1))
        room, _ = store.create(job.id, "test-hot-swap", 100)

        async def run() -> None:
            async with watch(room_url(server, room)) as a, watch(room_url(server, room)) as b:
                await asyncio.gather(a.frame_at_step(20), b.frame_at_step(20))
                await asyncio.to_thread(job.checkpoint, as_checkpoint(HEART, 200, 0.05))
                events = await asyncio.gather(a.event("reloaded"), b.event("reloaded"))
                assert [e["iteration"] for e in events] == [200, 200] and all(e["regrown"] for e in events)
                fa, fb = await same_step(a, b)
                assert fa.rgba.tobytes() == fb.rgba.tobytes()
                assert not [e for e in a.events + b.events if e["type"] == "reloaded"], "reloaded twice"

        asyncio.run(run())
    finally:
        job.close()


def test_a_joiner_who_may_not_see_the_model_is_refused(store: RoomStore, redis_server: EmbeddedRedis, models_dir,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream asks the one visibility check (`Access.visible`) on every join: the app in-process, the check
    refusing (the model is neither the joiner's nor, any more, the room creator's), the join closed with 4403."""
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from backend.config import get_settings
    from backend.storage.sharing import Access
    from backend.stream import app as stream_app

    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("NCA_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("NCA_DEVICE", "cpu")
    get_settings.cache_clear()
    monkeypatch.setattr(Access, "visible", lambda self, model, caller: False)
    room, _ = store.create(RANDOM, "test-private", 100)
    try:
        with TestClient(stream_app.app) as client, client.websocket_connect(f"/ws/stream?room={room.id}") as ws:
            assert "no longer available to its host" in ws.receive_json()["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
        assert closed.value.code == protocol.CLOSE_FORBIDDEN_ORIGIN == 4403
    finally:
        get_settings.cache_clear()


def test_many_strokes_become_one_event_per_frame(server: StreamServer, store: RoomStore) -> None:
    """Three participants drawing fast: a watcher gets at most one `strokes` event per frame, with each
    drawer's latest stroke, never a flood of events ahead of the frames."""
    room, _ = store.create(RANDOM, "test-strokes", 100)

    async def run() -> None:
        async with join(server, room) as watcher, contextlib_all([room_url(server, room)] * 3) as drawers:
            await watcher.frame()
            for i in range(8):
                for d, drawer in enumerate(drawers):
                    await drawer.ws.send(json.dumps({"cmd": "erase", "x": 5 + d, "y": 5 + i, "r": 2}))
            frames, events = 0, []
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                item = await watcher.next()
                if isinstance(item, dict) and item["type"] == "strokes":
                    events.append(item["strokes"])
                elif not isinstance(item, dict):
                    frames += 1
            assert events and len(events) <= frames, (len(events), frames)
            assert all(len({s["who"] for s in batch}) == len(batch) for batch in events), "one stroke per drawer"
            last = {s["who"]: s for batch in events for s in batch}
            assert sorted(s["y"] for s in last.values()) == [12, 12, 12], "each drawer's latest stroke"

    asyncio.run(run())
