"""Parts: features that run inside the controller on its one MQTT link.

The meeting server, telemetry ingest and Home Assistant discovery each need
the controller's registry, its link and its intents, but not each other. A
part subclasses `ControllerPart`, overrides what it needs, and is handed to
`Controller(parts=[...])`. The controller subscribes to every part's filters
on each (re)connect and hands it the messages they match, tells it when a
device's presence or state changes, asks it before an intent names a room, and
passes it every fleet event. A part sees its host only as a `PartHost`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from fleet.controller.host import PartHost
from fleet.mqtt import LastWill
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult, FleetEvent

# True while a request a part itself submitted runs (Home Assistant's entity presses,
# which that part limits to rooms it knows): the controller's own, not a requester's
# from the wire, so its intent may do what an operator's may (create its room).
_submitted_by_part: ContextVar[bool] = ContextVar("submitted_by_part", default=False)


# The broker user a request from the wire came from: the `{user}` of `api/by/{user}/{op}`
# (only that user may write there), "" for the shared `api/{op}` and a part's own.
_requester: ContextVar[str] = ContextVar("requester", default="")


def requester() -> str:
    """Who sent the request now running, where its topic says (`api/by/{user}/{op}`)."""
    return _requester.get()


@contextmanager
def requested_by(user: str) -> Iterator[None]:
    """Around the handling of one request from the wire: `requester()` names `user`."""
    token = _requester.set(user)
    try:
        yield
    finally:
        _requester.reset(token)


def submitted_by_part() -> bool:
    """The request now running was submitted by a part (`PartHost.submit`)."""
    return _submitted_by_part.get()


@contextmanager
def part_submission() -> Iterator[None]:
    """Around `PartHost.submit`: what runs inside is a part's own request."""
    token = _submitted_by_part.set(True)
    by = _requester.set("")
    try:
        yield
    finally:
        _requester.reset(by)
        _submitted_by_part.reset(token)


class ControllerPart:
    name = "part"
    host: PartHost

    def attach(self, host: PartHost) -> None:
        """Called once, when the host is built."""
        self.host = host

    def subscriptions(self) -> Mapping[str, int]:
        """Topic filters whose messages go to on_message, each with the QoS to subscribe at:
        0 for streams published at QoS 0 (telemetry), so that a broker delivering at the
        subscription's QoS (amqtt) adds no acknowledgements. Fixed once attached: the
        controller remembers which parts a topic goes to."""
        return {}

    def api_ops(self) -> Mapping[ApiOp, Callable[[ApiRequest], Awaitable[ApiResult]]]:
        """API ops this part answers: one final result each, published on api/result."""
        return {}

    def will(self) -> LastWill | None:
        """A last will for the controller's connection (the first part's that has one wins:
        MQTT allows one per connection)."""
        return None

    async def before_intent(self, room: str, request: ApiRequest | None) -> None:
        """A meeting intent (join, join-all) for `room` is about to be written, for
        `request` (None: not from the API). Raise RequestRefused to stop the write;
        whatever the room needs (its row) is made here, before any device can act on it."""

    async def on_connect(self) -> None:
        """After every (re)connect and subscribe, before the controller is synced."""

    async def on_synced(self) -> None:
        """Once the retained fleet has been read after a (re)connect."""

    async def on_message(self, topic: str, payload: bytes) -> None:
        """A message on one of this part's filters. Raise ProtocolError on bad input."""

    async def on_device_changed(self, device_id: str, presence_changed: bool) -> None:
        """A device's status or state changed (or it was removed from the registry)."""

    async def on_event(self, event: FleetEvent) -> None:
        """Every fleet event the controller emits."""

    async def on_closing(self) -> None:
        """The controller disconnects on purpose, the link still up: the place for a goodbye
        (a clean DISCONNECT suppresses the will)."""

    async def run(self) -> None:
        """Background work for the controller's lifetime; return when there is none."""

    async def close(self) -> None:
        """The controller is stopping: flush and release."""
