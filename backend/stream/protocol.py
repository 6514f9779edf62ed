"""The wire protocol of `WS /ws/stream` (docs/stream-protocol.md): frame header, close codes,
query parameters and client commands, validated into plain values before they touch a session.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backend.storage.models import BadReference, parse_reference, reference

# Binary frame: this header, then width*height*4 bytes RGBA8, row-major, top row first.
HEADER = struct.Struct("<IIHHI")  # frame number, CA step, width, height, flags
FLAGS = 0

FPS_RANGE = (1.0, 60.0)
STEPS_PER_FRAME_RANGE = (1, 16)
DEFAULT_FPS = 30.0
DEFAULT_STEPS_PER_FRAME = 1
MAX_COMMAND_BYTES = 1024

# Close codes, defined here only: the table in docs/stream-protocol.md and FINAL_CLOSE_CODES in
# frontend/js/stream.js follow this list (tests/stream/test_protocol_tables.py checks both).
# RFC 6455 codes where one fits, 44xx mirroring HTTP statuses otherwise.
CLOSE_NORMAL = 1000
CLOSE_INVALID_TEXT = 1007  # a text message that is not UTF-8 (closed by uvicorn's websocket layer)
CLOSE_POLICY_VIOLATION = 1008  # command flood
CLOSE_MESSAGE_TOO_BIG = 1009  # a client message over stream_max_message_bytes
CLOSE_SERVER_ERROR = 1011  # the model could not be loaded
CLOSE_SERVICE_RESTART = 1012  # a room moved to another replica, or the service stops: reconnect
CLOSE_TRY_AGAIN_LATER = 1013  # max concurrent streams reached (overall or for this address)
CLOSE_BAD_REQUEST = 4400  # invalid query parameters
CLOSE_FORBIDDEN_ORIGIN = 4403  # a browser page from an origin that may not open streams
CLOSE_UNKNOWN_MODEL = 4404
CLOSE_IDLE = 4408  # no client message for stream_idle_timeout_s
CLOSE_ROOM_CLOSED = 4410  # the room was closed by its host, or ended idle
CLOSE_TOO_SLOW = 4429  # the client accepted no frame for stream_stall_timeout_s

CLOSE_CODES = {name: code for name, code in globals().items() if name.startswith("CLOSE_")}
# After these the same request fails again: a client should not reconnect on its own (any other
# code, and 1001/1006/1012 of a service going away, is worth a retry with backoff).
FINAL_CLOSE_CODES = frozenset({CLOSE_INVALID_TEXT, CLOSE_POLICY_VIOLATION, CLOSE_MESSAGE_TOO_BIG, CLOSE_BAD_REQUEST,
                               CLOSE_FORBIDDEN_ORIGIN, CLOSE_UNKNOWN_MODEL, CLOSE_IDLE, CLOSE_ROOM_CLOSED})

# What a viewer's cells do when its model gets a new checkpoint (a job still training).
REGROW, KEEP = "regrow", "keep"
ON_CHECKPOINT = (REGROW, KEEP)
DEFAULT_ON_CHECKPOINT = REGROW
# Whether a viewer of a job still training replays its growth (regrows every `loop_steps`; see Engine).
LOOP_CHOICES = ("on", "off")


class ProtocolError(ValueError):
    """Bad client input; the message says what to fix and goes back as an `error` event."""


def _finite(value: int | float) -> bool:
    """Whether a JSON number is a finite float (a 400-digit JSON integer is not: float() overflows)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{name} must be a number")
    if not _finite(value) or not low <= value <= high:
        raise ProtocolError(f"{name} must be between {low:g} and {high:g}")
    return float(value)


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{name} must be an integer")
    if not low <= value <= high:
        raise ProtocolError(f"{name} must be between {low} and {high}")
    return value


def _angle(value: Any) -> float:
    """Degrees, any finite number, normalised to [0, 360)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise ProtocolError("angle must be a finite number (degrees)")
    return float(value) % 360.0


@dataclass(frozen=True)
class StreamParams:
    model: str  # a model id, or `<job id>@<iteration>`: that checkpoint of the job's history, a fixed snapshot
    fps: float = DEFAULT_FPS
    steps_per_frame: int = DEFAULT_STEPS_PER_FRAME
    angle: float = 0.0
    on_checkpoint: str = DEFAULT_ON_CHECKPOINT  # REGROW or KEEP
    loop: bool = True  # replay growth while the job trains (the service's stream_loop_multiple sets how long)

    @property
    def snapshot(self) -> bool:
        """Whether `model` names one checkpoint of a history: it plays as it is, never swapped."""
        return parse_reference(self.model)[1] is not None


def _parse_query_number(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ProtocolError(f"{name} must be a number, got {raw!r}") from None


def _choice(raw: str, name: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise ProtocolError(f"{name} must be one of {', '.join(allowed)}, got {raw[:40]!r}")
    return raw


def _model(raw: str) -> str:
    """A model id, or `<job id>@<iteration>` written the one way (`@0500` is `@500`)."""
    try:
        return reference(*parse_reference(raw.strip()))
    except BadReference as exc:
        raise ProtocolError(str(exc)) from None


# Query parameters (all optional but `model`): name -> parser of the raw text into the StreamParams field of that name.
_QUERY_PARSERS: dict[str, Callable[[str], Any]] = {
    "model": _model,
    "fps": lambda raw: _number(_parse_query_number(raw, "fps"), "fps", *FPS_RANGE),
    "steps_per_frame": lambda raw: _integer(_parse_query_number(raw, "steps_per_frame"), "steps_per_frame",
                                            *STEPS_PER_FRAME_RANGE),
    "angle": lambda raw: _angle(_parse_query_number(raw, "angle")),
    "on_checkpoint": lambda raw: _choice(raw, "on_checkpoint", ON_CHECKPOINT),
    "loop": lambda raw: _choice(raw, "loop", LOOP_CHOICES) == "on",
}


def parse_params(query: Mapping[str, str]) -> StreamParams:
    """`?model=...&fps=...&steps_per_frame=...&angle=...&on_checkpoint=...&loop=...` -> StreamParams,
    or ProtocolError."""
    model = query.get("model", "").strip()
    if not model:
        raise ProtocolError("the model query parameter is required: /ws/stream?model=<model id>")
    return StreamParams(**{name: parse(query[name]) for name, parse in _QUERY_PARSERS.items() if name in query})


@dataclass(frozen=True)
class Command:
    """One validated client command; only the fields its `cmd` uses are set.

    One more `cmd` never comes from a client: "regrow", the edit a new checkpoint queues (a reset
    that plants `cells` again, the seeds the viewer had planted since its last reset).
    """

    cmd: str
    x: float | None = None
    y: float | None = None
    r: float | None = None
    fps: float | None = None
    steps_per_frame: int | None = None
    angle: float | None = None
    on: bool | None = None  # loop only
    cells: tuple[tuple[int, int], ...] = ()  # regrow only: (x, y) of seeds to plant again


COMMANDS = ("reset", "seed", "erase", "pause", "play", "speed", "rotate", "step", "loop")
RESTARTS = ("reset", "regrow")  # edits that start the state over from the seed


def parse_command(text: str, width: int, height: int) -> Command:
    """A JSON text message -> Command; coordinates are checked against the session's grid."""
    if len(text.encode()) > MAX_COMMAND_BYTES:
        raise ProtocolError(f"command too long (max {MAX_COMMAND_BYTES} bytes)")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc.msg}") from None
    except RecursionError:  # "[[[[..." fits in a short message and is deeper than the parser may go
        raise ProtocolError("malformed JSON: nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("cmd"), str):
        raise ProtocolError('a command is a JSON object with a "cmd" string, e.g. {"cmd": "pause"}')
    cmd = msg["cmd"]
    if cmd in ("reset", "pause", "play", "step"):
        return Command(cmd)
    if cmd == "seed":
        return Command(cmd, x=_integer(msg.get("x"), "x", 0, width - 1), y=_integer(msg.get("y"), "y", 0, height - 1))
    if cmd == "erase":
        return Command(cmd, x=_number(msg.get("x"), "x", 0, width), y=_number(msg.get("y"), "y", 0, height),
                       r=_number(msg.get("r"), "r", 0, max(width, height)))
    if cmd == "speed":
        if "fps" not in msg and "steps_per_frame" not in msg:
            raise ProtocolError("speed needs fps and/or steps_per_frame")
        fps = _number(msg["fps"], "fps", *FPS_RANGE) if "fps" in msg else None
        spf = _integer(msg["steps_per_frame"], "steps_per_frame", *STEPS_PER_FRAME_RANGE) \
            if "steps_per_frame" in msg else None
        return Command(cmd, fps=fps, steps_per_frame=spf)
    if cmd == "rotate":
        return Command(cmd, angle=_angle(msg.get("angle")))
    if cmd == "loop":
        if not isinstance(msg.get("on"), bool):
            raise ProtocolError('loop needs "on": true or false')
        return Command(cmd, on=msg["on"])
    raise ProtocolError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")


def event(kind: str, **fields: Any) -> str:
    """A server->client JSON text message."""
    return json.dumps({"type": kind, **fields})
