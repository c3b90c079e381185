"""A negotiation failure travels back: the offerer hears it as an error from that peer."""

from __future__ import annotations

from pathlib import Path

from fleet.media.config import MediaConfig
from fleet.media.mesh import MediaMesh
from fleet.media.sinks import CaptureSink
from fleet.meetings.participant import participant_link
from fleet.mqtt import BrokerUrl
from fleet.protocol.messages import MeetOffer
from tests.support.brokers import BrokerHandle
from tests.support.running import controller, wait_for

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


# --- a negotiation failure travels back --------------------------------------------------------


async def test_a_failed_answer_reaches_the_offerer_as_an_error_from_that_peer(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async def link(pid: str, mesh: MediaMesh | None):  # type: ignore[no-untyped-def]
        secret = any_broker.add_device(pid)
        url = BrokerUrl.parse(any_broker.url(pid, secret))
        return participant_link(url, pid, any_broker.topics, mesh)

    mesh = MediaMesh(MediaConfig(), lambda _: None, CaptureSink(keep_s=1.0))
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        await link("ann", None) as ann,
        await link("bob", mesh) as bob,
    ):
        await bob.join("standup")
        a = await ann.join("standup")
        b = next(iter(a.peers)).participant
        # An offer bob cannot answer: it names the cause back to ann, as bob's error.
        await ann.send(MeetOffer(type="offer", to=b, sdp=SDP))
        await wait_for(lambda: ann.errors, what="ann hears of bob's failure")
        error = ann.errors[-1]
        assert (error.from_, error.code) == (b, "negotiation_failed")
        assert "bad SDP offer" in error.detail
        assert ann.session is not None, "the failure ends no session"
        assert a.participant in bob.peer_errors
        state = bob.meeting_state()
        assert state is not None
        assert state.peer_errors is not None
        assert a.participant in state.peer_errors
        ann_state = ann.meeting_state()
        assert ann_state is not None
        assert ann_state.peer_errors == {b: f"negotiation_failed: {error.detail}"[:256]}
