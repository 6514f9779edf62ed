"""Rooms: one living pattern for a classroom (docs/api.md, "Rooms"; the stream side: docs/stream-protocol.md).

The API makes and closes rooms and draws their QR codes; the CA itself plays on a stream replica.
"""

from __future__ import annotations

import io
from typing import Annotated
from urllib.parse import quote

import segno
from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from pydantic import BaseModel, Field

from backend.storage.models import BadReference, ModelNotFound, parse_reference, reference
from backend.storage.rooms import Room, RoomNotFound, RoomStore, TooManyRooms

from ..deps import CatalogDep, SettingsDep, StorageDep
from ..identity import resolve
from ..schemas import ErrorOut
from ..security import client_id, require_token

router = APIRouter(prefix="/api/rooms", tags=["rooms"])
ERRORS = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}}
HOST_HEADER = "X-Room-Host-Token"


class RoomIn(BaseModel):
    model: str = Field(..., description="a model id from GET /api/models, or `<job id>@<iteration>`",
                       examples=["example-lizard"])


class RoomOut(BaseModel):
    id: str = Field(..., description="the room id: `WS /ws/stream?room=<id>` joins it")
    code: str = Field(..., description="short join code (6 letters and digits) to type on a phone")
    model: str
    join_url: str = Field(..., description="the join page for participants (what the QR code holds)")
    stream_path: str = Field(..., description="where participants connect, on the page's origin")
    qr_svg: str = Field(..., description="the join link as a QR code (SVG)")
    max_participants: int
    idle_timeout_s: float


class RoomCreated(RoomOut):
    host_token: str = Field(..., description='secret, shown once: send {"cmd": "host", "token": ...} on the '
                                             "stream to pause, reset, switch or close the room")
    host_url: str = Field(..., description="the host's page (carries the host token: do not project it)")


def _rooms(storage: StorageDep) -> RoomStore:
    return storage.rooms


RoomsDep = Annotated[RoomStore, Depends(_rooms)]


def _out(room: Room, request: Request, settings: SettingsDep) -> dict:
    base = str(request.base_url).rstrip("/")
    return {"id": room.id, "code": room.code, "model": room.model,
            "join_url": f"{base}/room.html?code={room.code}", "stream_path": f"/ws/stream?room={room.id}",
            "qr_svg": f"{base}/api/rooms/{room.code}/qr.svg", "max_participants": settings.room_max_participants,
            "idle_timeout_s": settings.room_idle_timeout}


def _found(rooms: RoomStore, id_or_code: str) -> Room:
    try:
        return rooms.find(id_or_code)
    except RoomNotFound:
        raise HTTPException(404, f"no open room {id_or_code[:40]!r}: it was closed, ended idle, or never existed; "
                                 "check the code") from None


@router.post("", status_code=201, response_model=RoomCreated, dependencies=[Depends(require_token)],
             responses={**ERRORS, 400: {"model": ErrorOut, "description": "the body is not JSON"},
                        429: {"model": ErrorOut}}, summary="Open a room on a model")
def create_room(body: RoomIn, request: Request, rooms: RoomsDep, catalog: CatalogDep,
                settings: SettingsDep) -> dict:
    """A room plays one CA of `model` for everyone who joins; the answer's `host_token` controls it."""
    try:
        model = reference(*parse_reference(body.model.strip()))
        catalog.get_entry(model)
    except BadReference as exc:
        raise HTTPException(422, str(exc)) from None
    except ModelNotFound:
        raise HTTPException(404, f"no model {body.model[:80]!r}: pick one from GET /api/models") from None
    who = resolve(request)  # rooms count per owner; without one (an old script), per address
    caller = f"owner:{who.owner}" if who.owner else client_id(request)
    if not request.app.state.storage.access.visible(model, who):
        raise HTTPException(404, f"no model {body.model[:80]!r}: pick one from GET /api/models")
    try:
        room, token = rooms.create(model, caller, settings.rooms_per_client)
    except TooManyRooms:
        raise HTTPException(429, f"you already have {settings.rooms_per_client} open rooms: close one first "
                                 "(DELETE /api/rooms/{id}) or let one end idle") from None
    out = _out(room, request, settings)
    return {**out, "host_token": token, "host_url": f"{out['join_url']}#host={quote(token)}"}


@router.get("/{id_or_code}", response_model=RoomOut, responses=ERRORS, summary="Look up a room by id or join code")
def get_room(id_or_code: str, request: Request, rooms: RoomsDep, settings: SettingsDep) -> dict:
    return _out(_found(rooms, id_or_code), request, settings)


@router.get("/{id_or_code}/qr.svg", responses={**ERRORS, 200: {"content": {"image/svg+xml": {}}}},
            response_class=Response, summary="The room's join link as a QR code")
def room_qr(id_or_code: str, request: Request, rooms: RoomsDep, settings: SettingsDep) -> Response:
    """Rendered here (segno), so the host's page needs no QR library; black on white, a quiet zone of 4."""
    link = _out(_found(rooms, id_or_code), request, settings)["join_url"]
    buffer = io.BytesIO()
    segno.make(link, error="m").save(buffer, kind="svg", scale=8, border=4, xmldecl=False, svgns=True)
    return Response(buffer.getvalue(), media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


@router.delete("/{id_or_code}", status_code=204, responses={**ERRORS, 403: {"model": ErrorOut}},
               summary="Close a room (host only)")
def close_room(id_or_code: str, rooms: RoomsDep,
               host_token: Annotated[str | None, Header(alias=HOST_HEADER)] = None) -> Response:
    """Everyone in it is disconnected (close code 4410) within a second."""
    room = _found(rooms, id_or_code)
    if not room.is_host(host_token):
        raise HTTPException(403, f"only the room's host can close it: send its host token in {HOST_HEADER}")
    rooms.close(room)
    return Response(status_code=204)
