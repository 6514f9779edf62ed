"""transport.py reaches into uvicorn's internals; where they differ the stream must still work, only laxer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.websockets import WebSocket

from backend.storage.embedded_redis import EmbeddedRedis
from backend.stream import guard, protocol
from backend.stream.transport import SCOPE_KEY, ExposeTransport, abort
from tests.stream.client import watch
from tests.stream.conftest import RANDOM, StreamServer, _start


class OddTransport:
    """A transport with the two methods looked for, but no socket to size and no protocol to find."""

    def __init__(self) -> None:
        self.aborted = False

    def get_extra_info(self, name: str) -> object:
        return object()  # not a socket: no setsockopt

    def abort(self) -> None:
        self.aborted = True


class OtherServer:
    def __init__(self, transport: object) -> None:
        self.transport = transport

    async def send(self, message: dict) -> None:
        pass


async def receive() -> dict:
    return {"type": "websocket.connect"}


def exposed(send: object) -> dict:
    """The scope the app behind ExposeTransport sees for a websocket whose server sends with `send`."""
    seen: dict = {}

    async def app(scope: dict, receive: object, send: object) -> None:
        seen.update(scope)

    asyncio.run(ExposeTransport(app, send_buffer=65536)({"type": "websocket"}, receive, send))
    return seen


@pytest.mark.parametrize("send", [
    OtherServer(None).send,  # a protocol object without a transport
    OtherServer(object()).send,  # a transport of another kind
    lambda message: None,  # not a method at all
], ids=["no transport", "foreign transport", "plain function"])
def test_no_transport_found_means_none_used(send: object) -> None:
    scope = exposed(send)
    assert SCOPE_KEY not in scope
    abort(scope)  # nothing to abort: no error
    guard._limit_parser(WebSocket(scope, receive, send), 4096)


def test_a_transport_without_a_socket_or_protocol_is_still_used_for_abort() -> None:
    transport = OddTransport()
    scope = exposed(OtherServer(transport).send)
    assert scope[SCOPE_KEY] is transport
    guard._limit_parser(WebSocket(scope, receive, OtherServer(transport).send), 4096)  # no get_protocol
    abort(scope)
    assert transport.aborted


@pytest.fixture(scope="module")
def legacy_server(models_dir: Path, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[StreamServer]:
    """The stream service on uvicorn's older websockets implementation (`--ws websockets`)."""
    srv = _start(models_dir, redis_server, tmp_path_factory.mktemp("stream-legacy") / "stream.log",
                 env={"UVICORN_WS": "websockets"})  # read by uvicorn's command line
    yield srv
    srv.stop()


def test_the_legacy_websockets_implementation_plays_and_limits_messages(legacy_server: StreamServer) -> None:
    async def scenario() -> None:
        async with watch(legacy_server.url(RANDOM, fps=30)) as v:
            first = await v.frame()
            await v.send(cmd="speed", steps_per_frame=2)
            assert (await v.event("state"))["steps_per_frame"] == 2
            assert (await v.frame_at_step(first.step + 6)).step >= first.step + 6
            await v.ws.send("x" * 100_000)
            close = await v.closed()
            assert close.code == protocol.CLOSE_MESSAGE_TOO_BIG == 1009
        assert legacy_server.health()["status"] == "ok"

    asyncio.run(scenario())
    assert "Traceback" not in legacy_server.log.read_text()
