"""Checks on SDP going out and coming in, before aiortc acts on it.

aiortc parses almost anything ("garbage" is a valid session with no media), so a remote
description is checked here first; and aiortc gathers no host candidates on a machine
with only loopback (aioice skips 127.0.0.1 and ::1), which would leave a connection in
"new" for ever: our own description is checked for candidates. A remote one may come
without any when it announces trickle ICE (its candidates follow as messages).
"""

from __future__ import annotations

from aiortc import sdp as aiortc_sdp

from fleet.media.errors import MediaError

MAX_SDP_BYTES = 32 * 1024  # as the signalling model (fleet.protocol.messages.Sdp)


def parse_remote(peer: str, text: str, kind: str) -> aiortc_sdp.SessionDescription:
    """The peer's offer or answer, or MediaError saying what is wrong with it."""
    what = f"{kind} from {peer}"
    if not isinstance(text, str) or not text.strip():
        raise MediaError(f"bad SDP {what}: empty")
    if len(text.encode()) > MAX_SDP_BYTES:
        raise MediaError(f"bad SDP {what}: larger than {MAX_SDP_BYTES} bytes")
    if not text.lstrip().startswith("v=0"):
        raise MediaError(f"bad SDP {what}: does not start with v=0")
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser fails with assorted errors (even AssertionError)
        raise MediaError(f"bad SDP {what}: unparsable ({type(exc).__name__}: {exc})") from exc
    kinds = [m.kind for m in description.media]
    if kinds.count("audio") != 1 or set(kinds) - {"audio", "application"}:
        raise MediaError(f"bad SDP {what}: expected one audio section, got {kinds or 'none'}")
    for media in description.media:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise MediaError(f"bad SDP {what}: no ICE credentials")
        if not media.dtls or not media.dtls.fingerprints:
            raise MediaError(f"bad SDP {what}: no DTLS fingerprint")
    if not any(m.ice_candidates for m in description.media) and not trickles(description):
        raise MediaError(
            f"bad SDP {what}: no ICE candidates (the peer's host has no usable "
            "network interface besides loopback?)"
        )
    return description


def trickles(description: aiortc_sdp.SessionDescription) -> bool:
    """The description says its candidates may come later (`a=ice-options:trickle`, as
    browsers and esp_peer send): no candidates in it is then no error."""
    return any("trickle" in (m.ice_options or "").split() for m in description.media)


def parse_own(text: str) -> aiortc_sdp.SessionDescription:
    return aiortc_sdp.SessionDescription.parse(text)


def require_candidates(text: str) -> None:
    if "\na=candidate:" not in text:
        raise MediaError(
            "no ICE candidates: this host (or network namespace) has no network interface "
            "besides loopback, and aioice does not use loopback addresses; give it an "
            "interface with an address (even a dummy one) or configure a TURN server"
        )


def split_candidates(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Our complete SDP as a trickling sender sends it (§8.6): without its `a=candidate`
    and `a=end-of-candidates` lines, each section announcing `a=ice-options:trickle`, and
    the candidates, as (mid, "candidate:...") in their order, to follow as messages."""
    lines = text.rstrip("\r\n").split("\r\n")
    out: list[str] = []
    candidates: list[tuple[str, str]] = []
    section: list[str] = []  # this media section's candidates (its a=mid may come later)
    mid = "0"

    def close_section() -> None:
        candidates.extend((mid, c) for c in section)
        section.clear()

    for line in lines:
        if line.startswith("m="):
            close_section()
            # The default candidate's port and address go too, as a browser's do.
            kind, _port, rest = line.split(" ", 2)
            line = f"{kind} 9 {rest}"
        elif line.startswith("c=IN IP"):
            line = f"c=IN IP{line[7]} {'::' if line[7] == '6' else '0.0.0.0'}"
            mid = str(sum(1 for o in out if o.startswith("m=")))  # the index until a=mid
        if line.startswith("a=mid:"):
            mid = line.removeprefix("a=mid:")
        if line.startswith("a=candidate:"):
            section.append(line.removeprefix("a="))
        elif line == "a=end-of-candidates" or line.startswith("a=ice-options:"):
            continue
        else:
            out.append(line)
            if line.startswith("a=ice-pwd:"):
                out.append("a=ice-options:trickle")
    close_section()
    return "\r\n".join(out) + "\r\n", candidates


def codec_names(description: aiortc_sdp.SessionDescription) -> list[str]:
    audio = next(m for m in description.media if m.kind == "audio")
    return [c.name.lower() for c in audio.rtp.codecs]


def negotiated(local: list[str], remote: list[str]) -> tuple[str | None, str | None]:
    """(codec we send, codec we receive) from both descriptions' codec lists.

    aiortc sends with its first codec, which is the first of its own list present in the
    other side's list; each side's list is in its preference order.
    """
    send = next((c for c in local if c in remote), None)
    recv = next((c for c in remote if c in local), None)
    return send, recv
