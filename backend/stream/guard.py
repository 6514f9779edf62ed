"""Abuse limits of `WS /ws/stream`: who may open a stream, and how much a stream may send.

- Origin: a browser page may open streams only from an allowed origin (`stream_allowed_origins`;
  by default the stream's own host name, localhost and the host of `public_stream_url`), so a
  foreign site cannot make its visitors' browsers watch (and load) our streams. Clients that send
  no Origin (scripts, the `websockets` library) are not browsers and are let through. Close 4403.
- At most `stream_max_sessions_per_client` streams per remote address (close 1013, as for the
  overall cap).
- A client message bigger than `stream_max_message_bytes` closes the stream with 1009; under
  uvicorn the websocket parser itself is told the limit, so a huge message is refused before it is
  buffered.
- Commands are rate limited by a token bucket (`stream_command_rate` per second, bursts of
  `stream_command_burst`): one over the limit is ignored with an `error` event; more than a
  burst's worth ignored within FLOOD_WINDOW seconds closes the stream with 1008.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import WebSocket
from starlette.types import Message

from backend.config import Settings

from . import protocol as p
from .engine import Engine
from .protocol import ProtocolError
from .sessions import Session
from .transport import SCOPE_KEY

FLOOD_WINDOW = 10.0  # seconds over which ignored commands are counted
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
SCOPE_LIMITER = "nca.command_limiter"

_owners: weakref.WeakKeyDictionary[Session, str] = weakref.WeakKeyDictionary()  # session -> remote address


@dataclass
class CommandLimiter:
    """A token bucket per stream, plus the times of recently ignored commands."""

    rate: float
    burst: int
    tokens: float = 0.0
    updated: float = field(default_factory=time.monotonic)
    ignored: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.ignored.append(now)
        while self.ignored and self.ignored[0] < now - FLOOD_WINDOW:
            self.ignored.popleft()
        return False

    @property
    def flooding(self) -> bool:
        return len(self.ignored) > self.burst


def origin_allowed(origin: str | None, host_header: str | None, settings: Settings) -> bool:
    if origin is None:
        return True  # not a browser
    configured = [o.strip().rstrip("/") for o in settings.stream_allowed_origins.split(",") if o.strip()]
    if configured:
        return "*" in configured or origin.rstrip("/") in configured
    origin_host = urlsplit(origin).hostname
    own_host = urlsplit(f"//{host_header}").hostname if host_header else None
    public_host = urlsplit(settings.public_stream_url).hostname if settings.public_stream_url else None
    return origin_host is not None and (origin_host in LOCAL_HOSTS or origin_host in (own_host, public_host))


def client_host(ws: WebSocket) -> str:
    return ws.client.host if ws.client else "unknown"


def admit(ws: WebSocket, engine: Engine, settings: Settings) -> tuple[int, str] | None:
    """Before the stream opens: (close code, reason) to refuse it, else None (and its limits are set)."""
    origin = ws.headers.get("origin")
    if not origin_allowed(origin, ws.headers.get("host"), settings):
        return p.CLOSE_FORBIDDEN_ORIGIN, f"origin {origin[:60]} may not open streams here (NCA_STREAM_ALLOWED_ORIGINS)"
    if _streams_from(client_host(ws), engine) >= settings.stream_max_sessions_per_client:
        return _too_many_from_client(settings)
    ws.scope[SCOPE_LIMITER] = CommandLimiter(settings.stream_command_rate, settings.stream_command_burst)
    _limit_parser(ws, settings.stream_max_message_bytes)
    return None


def opened(ws: WebSocket, engine: Engine, session: Session, settings: Settings) -> tuple[int, str] | None:
    """The stream is open: count it as its address's. (close code, reason) if streams from that address
    opened meanwhile make it one too many (admit cannot count those still waiting for their model to load)."""
    host = _owners[session] = client_host(ws)
    if _streams_from(host, engine) > settings.stream_max_sessions_per_client:
        return _too_many_from_client(settings)
    return None


def _streams_from(host: str, engine: Engine) -> int:
    return sum(1 for session in engine.sessions if _owners.get(session) == host)


def _too_many_from_client(settings: Settings) -> tuple[int, str]:
    limit = settings.stream_max_sessions_per_client
    return p.CLOSE_TRY_AGAIN_LATER, f"too many streams from your address (max {limit}); close one first"


def screen(ws: WebSocket, message: Message, settings: Settings) -> tuple[int, str] | None:
    """Each client message: (close code, reason) to end the stream; ProtocolError to ignore just this one."""
    data = message.get("text")
    size = len(data.encode()) if data is not None else len(message.get("bytes") or b"")
    if size > settings.stream_max_message_bytes:
        return p.CLOSE_MESSAGE_TOO_BIG, f"message too big: at most {settings.stream_max_message_bytes} bytes"
    limiter: CommandLimiter = ws.scope[SCOPE_LIMITER]
    if not limiter.allow(time.monotonic()):
        if limiter.flooding:
            return p.CLOSE_POLICY_VIOLATION, f"command flood: more than {limiter.burst} commands ignored"
        raise ProtocolError(f"too many commands (at most {limiter.rate:g} per second); this one was ignored")
    return None


def _limit_parser(ws: WebSocket, max_bytes: int) -> None:
    """Tell uvicorn's websocket parser the size limit (its own default is 16 MiB); best effort."""
    transport = ws.scope.get(SCOPE_KEY)
    get_protocol = getattr(transport, "get_protocol", None)
    protocol = get_protocol() if get_protocol is not None else None
    connection = getattr(protocol, "conn", None)  # websockets' sans-I/O protocol (uvicorn's default)
    if hasattr(connection, "max_message_size"):
        connection.max_message_size = max_bytes
    elif hasattr(protocol, "max_size"):  # websockets' legacy protocol
        protocol.max_size = max_bytes
