"""What one participant can do with audio, and how its peer connections are set up."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from aiortc import RTCConfiguration, RTCIceServer

from fleet.media.errors import MediaError, MediaNotSupported
from fleet.protocol.messages import Capabilities

# Our codec names and aiortc's MIME types; the order of CODECS is the platform's preference:
# Opus 48 kHz first, then G.711 (what many ESP boards send).
CODEC_MIME = {"opus": "audio/opus", "pcmu": "audio/PCMU", "pcma": "audio/PCMA"}
CODECS: tuple[str, ...] = ("opus", "pcmu", "pcma")
ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
AIORTC_JITTER_FRAMES = 4
MAX_JITTER_FRAMES = 8  # half the buffer's 16 packets
OPUS_KBPS = (6, 510)


def known_codecs(names: list[str] | tuple[str, ...]) -> list[str]:
    """`names` lowercased, unknown ones (a peer may declare codecs we lack) and repeats dropped."""
    out: list[str] = []
    for name in names:
        low = name.lower()
        if low in CODEC_MIME and low not in out:
            out.append(low)
    return out


@dataclass(frozen=True)
class MediaConfig:
    # Default none: aiortc otherwise asks a public STUN server, which these machines cannot
    # reach. A TURN server's credentials go in the URL: "turn:user:secret@host:3478".
    ice_servers: tuple[str, ...] = ()
    codecs: tuple[str, ...] = CODECS  # offered and accepted, in preference order
    mic: bool = True  # has a microphone: sends audio
    speaker: bool = True  # has a speaker: plays (receives) audio
    connect_timeout_s: float = 10.0  # from SDP exchange to a connected peer
    # 20 ms frames the audio jitter buffer holds before playing. aiortc's own 4 (80 ms)
    # puts loopback mouth-to-ear at ~110 ms; 3 gives ~90 ms (bench/media_pair.py) and
    # still rides out 40-60 ms of jitter. More for a jittery network, fewer for latency;
    # 0 plays each packet as it arrives and drops the ones that come after a later one.
    jitter_frames: int = 3
    # The same for a mixed session's one stream, the mix: the mixer plays it out on its
    # own 20 ms clock after a jitter buffer of its own (Janus's prebuffer of 2 packets),
    # so none here keeps mouth-to-ear through the mixer under 100 ms (bench/mixed_room.py).
    mixer_jitter_frames: int = 0
    # Opus bitrate. The mesh encodes Opus itself, mono (fleet.media.encoding): 32 kbit/s is
    # transparent for speech; aiortc alone sends stereo at 96 kbit/s.
    opus_kbps: int = 32
    # Send our SDP without its candidates and each candidate after it as a `candidate`
    # message, then the end of them (trickle ICE, docs/protocol.md §8.6), as browsers and
    # esp_peer do. aiortc has gathered them all by then: this changes only how they travel
    # (to drive a receiver's trickle path, e.g. the C host device's, from Python).
    trickle: bool = False

    def __post_init__(self) -> None:
        if not self.codecs:
            raise MediaError(f"no codecs: choose from {', '.join(CODECS)}")
        unknown = [c for c in self.codecs if c.lower() not in CODEC_MIME]
        if unknown:
            raise MediaError(f"unknown codecs {unknown}: choose from {', '.join(CODECS)}")
        object.__setattr__(self, "codecs", tuple(known_codecs(self.codecs)))
        if self.connect_timeout_s <= 0:
            raise MediaError("connect_timeout_s must be positive")
        for name in ("jitter_frames", "mixer_jitter_frames"):
            if not 0 <= getattr(self, name) <= MAX_JITTER_FRAMES:
                raise MediaError(f"{name} must be 0..{MAX_JITTER_FRAMES}")
        if not OPUS_KBPS[0] <= self.opus_kbps <= OPUS_KBPS[1]:
            raise MediaError(f"opus_kbps must be {OPUS_KBPS[0]}..{OPUS_KBPS[1]} (libopus' range)")
        for url in self.ice_servers:
            parse_ice_server(url)  # fail at configuration time, not at the first call

    def capabilities(self) -> Capabilities:
        return Capabilities(
            audio=True, mic=self.mic, speaker=self.speaker, codecs=list(self.codecs)
        )

    def rtc_configuration(self) -> RTCConfiguration:
        # iceServers=[] (not None): None makes aiortc add stun.l.google.com.
        return RTCConfiguration(iceServers=[parse_ice_server(u) for u in self.ice_servers])

    def require_speaker(self) -> None:
        """Raise MediaNotSupported when someone asks this participant to play audio."""
        if not self.speaker:
            raise MediaNotSupported("receiving audio", "this participant has no speaker")

    def require_mic(self) -> None:
        if not self.mic:
            raise MediaNotSupported("sending audio", "this participant has no microphone")


def parse_ice_server(url: str) -> RTCIceServer:
    """ "stun:host:port" or "turn:user:secret@host:port[?transport=udp]" as aiortc wants it."""
    scheme = next((s for s in ICE_SCHEMES if url.startswith(s)), None)
    if scheme is None or len(url) == len(scheme):
        raise MediaError(
            f"bad ICE server {url!r}: expected stun:HOST[:PORT] or turn:USER:SECRET@HOST[:PORT]"
        )
    rest = url[len(scheme) :]
    if "@" not in rest:
        return RTCIceServer(urls=url)
    creds, _, hostpart = rest.rpartition("@")
    user, sep, secret = creds.partition(":")
    if not scheme.startswith("turn") or not sep or not hostpart:
        raise MediaError(f"bad ICE server {url!r}: only turn: URLs carry USER:SECRET@")
    return RTCIceServer(urls=scheme + hostpart, username=unquote(user), credential=unquote(secret))
