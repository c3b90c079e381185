"""Trickle ICE on the Python side (docs/protocol.md §8.6), without a network: what a
mesh does with candidates that are bad, early or too many, the SDP checks, and how a
trickling Python participant (MediaConfig.trickle) splits its SDP. The candidates
connecting for real are in tests/web/test_console.py (a browser trickles) and
tests/firmware/test_host_audio.py (Python participants trickle to the C host device)."""

from __future__ import annotations

import pytest

from fleet.media import MediaConfig, MediaError, MediaMesh, NullSink
from fleet.media import sdp as sdp_check
from fleet.media.mesh import MAX_EARLY_CANDIDATES

LINE = "candidate:1 1 udp 2122260223 10.1.0.2 50000 typ host"
OFFER = (
    "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n{options}"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=sendrecv\r\n"
)


async def test_bad_and_excess_early_candidates_are_refused() -> None:
    mesh = MediaMesh(MediaConfig(), lambda peer: None, NullSink())
    try:
        for bad in ("garbage", "candidate:1 1 udp", ""):
            with pytest.raises(MediaError, match="bad ICE candidate from p-1"):
                await mesh.add_candidate("p-1", bad)
        # Before the peer's SDP: held, up to a bound (a misbehaving peer costs little).
        mesh.expect_description("p-1")
        for _ in range(MAX_EARLY_CANDIDATES - 1):
            await mesh.add_candidate("p-1", LINE)
        await mesh.add_candidate("p-1", None)  # the end of them counts too
        with pytest.raises(MediaError, match="early candidates"):
            await mesh.add_candidate("p-1", LINE)
        # A peer that leaves takes its held candidates with it.
        await mesh.remove_peer("p-1")
        await mesh.add_candidate("p-1", LINE)
    finally:
        await mesh.close()


def test_an_sdp_without_candidates_is_refused_unless_it_trickles() -> None:
    with pytest.raises(MediaError, match="no ICE candidates"):
        sdp_check.parse_remote("p-1", OFFER.format(options=""), "offer")
    parsed = sdp_check.parse_remote(
        "p-1", OFFER.format(options="a=ice-options:trickle\r\n"), "offer"
    )
    assert sdp_check.trickles(parsed)


def test_a_trickling_sender_splits_its_sdp() -> None:
    complete = (
        OFFER.format(options="")
        .replace(
            "a=sendrecv\r\n",
            f"a=sendrecv\r\na={LINE}\r\na={LINE.replace('10.1.0.2', '10.1.0.3')}\r\n"
            "a=end-of-candidates\r\n",
        )
        .replace("m=audio 9 ", "m=audio 50000 ")
        .replace("c=IN IP4 0.0.0.0", "c=IN IP4 10.1.0.2")
    )
    sdp, candidates = sdp_check.split_candidates(complete)
    assert candidates == [("0", LINE), ("0", LINE.replace("10.1.0.2", "10.1.0.3"))]
    assert "a=candidate" not in sdp
    assert "end-of-candidates" not in sdp
    assert "10.1.0.2" not in sdp  # nor the default candidate's address and port
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" in sdp
    parsed = sdp_check.parse_remote("p-1", sdp, "offer")  # valid: it announces trickle
    assert sdp_check.trickles(parsed)
    assert sdp.count("a=ice-options:trickle") == 1
