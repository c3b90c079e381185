"""The one place a controller is put together, for `fleet up`, `fleet controller` and the
demo: its store, its parts (meeting server, intercom, web logins, telemetry ingest, Home
Assistant) and their settings, so the commands cannot wire it differently."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet.announce import AnnouncePart
from fleet.auth import CredentialStore
from fleet.controller.commands import GroupAcl
from fleet.controller.parts import ControllerPart
from fleet.controller.service import Controller
from fleet.controller.web_login import WebLogins
from fleet.ha import HomeAssistantPart, HomeAssistantSettings
from fleet.intercom import Intercom
from fleet.meetings import DEFAULT_MESH_CAP, DEFAULT_ROOM_CAP, MeetingServer
from fleet.mqtt import BrokerUrl
from fleet.protocol import Topics
from fleet.telemetry import InfluxSettings, TelemetryIngest


@dataclass(frozen=True)
class ControllerSettings:
    url: BrokerUrl
    store_path: Path  # the SQLite database
    topics: Topics = field(default_factory=Topics)
    client_id: str | None = None  # None: the broker username
    room_cap: int = DEFAULT_ROOM_CAP
    mesh_cap: int = DEFAULT_MESH_CAP
    # Every join and intent creates its room (off: only operators' create rooms).
    auto_create: bool = False
    # Janus WebSocket URLs, the mixers of mixed rooms (each may carry its API secret:
    # ws://:SECRET@HOST:PORT); `mixer_secret` is the API secret of those that do not.
    mixers: Sequence[str] = ()
    mixer_secret: str | None = field(default=None, repr=False)
    # The credentials the broker reads: browsers' web logins are minted there (None: no
    # web logins), and set_groups grants there unless `group_acl` says otherwise.
    credentials: CredentialStore | None = None
    group_acl: GroupAcl | None = None  # a broker that keeps its own ACL files (Mosquitto)
    reload_credentials: Callable[[], None] | None = None  # the broker rereads them now
    influx: InfluxSettings | None = None  # telemetry ingest, when enabled
    ingest_share: str | None = None  # its share group, split with `fleet ingest`
    home_assistant: HomeAssistantSettings | None = None  # None: no Home Assistant part
    parts: Sequence[ControllerPart] = ()  # further parts, after the ones above


def build_controller(settings: ControllerSettings) -> Controller:
    meetings = MeetingServer(
        room_cap=settings.room_cap,
        auto_create=settings.auto_create,
        mesh_cap=settings.mesh_cap,
        mixers=list(settings.mixers),
        mixer_secret=settings.mixer_secret,
    )
    # Announcements reach a room's live members through the meeting server's view.
    parts: list[ControllerPart] = [meetings, AnnouncePart(rooms=meetings), Intercom()]
    if settings.credentials is not None:  # people's browsers get credentials only where kept
        parts.append(WebLogins(settings.credentials, reload=settings.reload_credentials))
    if settings.influx is not None and settings.influx.enabled:
        parts.append(TelemetryIngest(settings.influx, share=settings.ingest_share))
    if settings.home_assistant is not None:
        parts.append(HomeAssistantPart(settings.home_assistant))
    parts.extend(settings.parts)
    return Controller(
        settings.url,
        settings.store_path,
        settings.topics,
        client_id=settings.client_id,
        credentials=settings.credentials if settings.group_acl is None else settings.group_acl,
        parts=parts,
    )
