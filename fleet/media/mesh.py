"""One participant's full mesh: one aiortc peer connection per remote participant.

Signalling is the caller's (fleet.meetings.participant): it hands SDP strings in and
out. The newcomer offers to every member already there (`create_offer`), members answer
(`accept_offer`), the offerer completes with `accept_answer`. Our own ICE is vanilla:
candidates are gathered inside setLocalDescription and travel in the SDP. The remote's
may also trickle in after its SDP (`add_candidate`, a browser's way); those that come
before its SDP has been applied wait for it.

Per peer, from both sides' declared capabilities:
- codecs: the intersection, in each side's own preference order (Opus, then G.711);
  none in common is refused before any SDP goes out;
- direction: we send only if we have a mic and the peer a speaker, receive only if we
  have a speaker and the peer a mic; a link with neither is "inactive" but still set up.

Sending: each peer's sender reads a SendTrack; the tracks of one source (the SharedTracks
of one SharedSource, or one track) share a Broadcast that reads it once, applies the mic
gate and encodes once per codec (mono Opus, G.711): fleet.media.encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
from aiortc import (
    MediaStreamTrack,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer
from aiortc.sdp import SessionDescription, candidate_from_sdp

from fleet.media import sdp
from fleet.media.config import (
    AIORTC_JITTER_FRAMES,
    CODEC_MIME,
    CODECS,
    MediaConfig,
    known_codecs,
)
from fleet.media.ducking import Ducking
from fleet.media.encoding import ENCODED, Broadcast, EncoderInfo, SendTrack
from fleet.media.errors import MediaError, MediaNotSupported
from fleet.media.frames import TIME_BASE, Normalizer, is_internal, make_frame, scale
from fleet.media.receiving import InlineDecoder, InOrderBuffer, decode_inline
from fleet.media.sinks import AudioSink
from fleet.media.sources import SharedTrack
from fleet.media.stats import PeerCounters, peer_stats
from fleet.protocol.messages import MIXER_PARTICIPANT, Capabilities, PeerAudioStats

__all__ = ["MediaError", "MediaMesh", "MediaNotSupported"]

log = logging.getLogger(__name__)

SourceFor = Callable[[str], MediaStreamTrack | None]
# A peer that declared nothing is taken for a full audio device with the platform's codecs.
# Trickled candidates held per peer before its SDP is applied (a browser sends a few).
MAX_EARLY_CANDIDATES = 32
UNDECLARED = Capabilities(audio=True, mic=True, speaker=True, codecs=list(CODECS))
DIRECTIONS = {
    (True, True): "sendrecv",
    (True, False): "sendonly",
    (False, True): "recvonly",
    (False, False): "inactive",
}


@dataclass(eq=False)
class Peer:
    id: str
    pc: RTCPeerConnection
    transceiver: RTCRtpTransceiver
    send: bool
    recv: bool
    created: float = field(default_factory=time.monotonic)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    send_codec: str | None = None
    recv_codec: str | None = None
    counters: PeerCounters = field(default_factory=PeerCounters)
    normalizer: Normalizer = field(default_factory=Normalizer)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    sink_failed: bool = False
    outgoing: SendTrack | None = None  # what our sender to this peer reads
    decoder: InlineDecoder | None = None  # hands this peer's decoded audio to _deliver


class MediaMesh:
    def __init__(
        self,
        config: MediaConfig,
        source_for: SourceFor,
        sink: AudioSink,
        on_peer_failed: Callable[[str, MediaError], None] | None = None,
    ) -> None:
        """`source_for(peer)` gives the track to send to that peer (None: send nothing);
        `sink` gets every peer's decoded audio and is closed with the mesh;
        `on_peer_failed(peer, error)` hears of a peer that did not connect in time or
        whose connection failed later (it is removed from the mesh)."""
        self.config = config
        self.source_for = source_for
        self.sink = sink
        self.on_peer_failed = on_peer_failed
        self.failures: dict[str, MediaError] = {}
        self._peers: dict[str, Peer] = {}
        self._mic = True
        self._gain = 1.0
        # Lowered while the device plays an announcement over the meeting (§14).
        self.ducking = Ducking()
        self._closed = False
        self._caps = {c.mimeType.lower(): c for c in RTCRtpSender.getCapabilities("audio").codecs}
        # One per source being sent (a SharedSource, or a track of one peer's own).
        self._broadcasts: dict[object, Broadcast] = {}
        # Trickled candidates per peer that came before its SDP was applied.
        self._early: dict[str, list[RTCIceCandidate | None]] = {}
        self._applying: set[str] = set()  # peers whose remote SDP is being applied

    # --- negotiation --------------------------------------------------------------------------
    async def create_offer(self, peer: str, peer_caps: Capabilities | None) -> str:
        entry = await self._new_peer(peer, peer_caps)
        try:
            await entry.pc.setLocalDescription(await entry.pc.createOffer())
            self._still_current(entry)
            offer = entry.pc.localDescription.sdp
            sdp.require_candidates(offer)
        except Exception as exc:
            await self._drop(entry)
            raise _media_error(f"cannot offer to {peer}", exc) from exc
        self._watch(entry)
        return offer

    async def accept_offer(self, peer: str, peer_caps: Capabilities | None, sdp_text: str) -> str:
        remote = sdp.parse_remote(peer, sdp_text, "offer")
        offered = sdp.codec_names(remote)
        if not set(offered) & set(self.config.codecs):
            raise MediaError(
                f"no common codec with {peer}: its offer has {', '.join(offered) or 'none'}, "
                f"we use {', '.join(self.config.codecs)}"
            )
        entry = await self._new_peer(peer, peer_caps)
        self._applying.add(peer)
        try:
            await entry.pc.setRemoteDescription(RTCSessionDescription(sdp_text, "offer"))
            await self._apply_early(entry)
            await entry.pc.setLocalDescription(await entry.pc.createAnswer())
            self._still_current(entry)
            answer = entry.pc.localDescription.sdp
            sdp.require_candidates(answer)
            self._negotiated(entry, answer, remote)
        except Exception as exc:
            await self._drop(entry)
            raise _media_error(f"cannot answer {peer}", exc) from exc
        self._watch(entry)
        return answer

    async def accept_answer(self, peer: str, sdp_text: str) -> None:
        entry = self._peers.get(peer)
        if entry is None or entry.pc.signalingState != "have-local-offer":
            raise MediaError(f"answer from {peer}, to whom no offer is pending")
        try:
            remote = sdp.parse_remote(peer, sdp_text, "answer")
            self._applying.add(peer)
            await entry.pc.setRemoteDescription(RTCSessionDescription(sdp_text, "answer"))
            await self._apply_early(entry)
            self._still_current(entry)
            self._negotiated(entry, entry.pc.localDescription.sdp, remote)
        except Exception as exc:
            # A failed answer leaves nothing usable: drop the peer, the others keep going.
            await self._drop(entry)
            raise _media_error(f"cannot accept the answer from {peer}", exc) from exc

    def expect_description(self, peer: str) -> None:
        """A new SDP from `peer` is on its way in: candidates from now on belong to it and
        wait until it is applied (called as the SDP arrives, before its task runs)."""
        self._early[peer] = []
        self._applying.add(peer)

    async def add_candidate(self, peer: str, candidate: str | None, mid: str = "0") -> None:
        """One trickled remote candidate of `peer` (None: the end of them). Held until its
        SDP is applied; MediaError when it cannot be read."""
        ice = None if candidate is None else _ice_candidate(peer, candidate, mid)
        entry = self._peers.get(peer)
        if entry is None or entry.pc.remoteDescription is None or peer in self._applying:
            early = self._early.setdefault(peer, [])
            if len(early) >= MAX_EARLY_CANDIDATES:
                raise MediaError(f"more than {MAX_EARLY_CANDIDATES} early candidates from {peer}")
            early.append(ice)
            return
        await entry.pc.addIceCandidate(ice)

    async def _apply_early(self, entry: Peer) -> None:
        """The candidates that came before the remote SDP, once it is applied."""
        self._applying.discard(entry.id)
        for ice in self._early.pop(entry.id, []):
            await entry.pc.addIceCandidate(ice)

    async def remove_peer(self, peer: str) -> None:
        entry = self._peers.get(peer)
        if entry is not None:
            await self._drop(entry)
        self.failures.pop(peer, None)
        self._early.pop(peer, None)
        self._applying.discard(peer)

    async def close(self) -> None:
        """Close every peer connection and the sink. Sources given through source_for are
        stopped by aiortc with their senders; a SharedSource is the caller's to stop."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(self._drop(p) for p in list(self._peers.values())))
        self.sink.close()

    def peers(self) -> list[str]:
        return sorted(self._peers)

    async def wait_connected(self, peer: str | None = None, timeout: float | None = None) -> None:
        """Until `peer` (or every current peer) is connected; MediaError if one fails or
        `timeout` (default: config.connect_timeout_s) passes."""
        timeout = self.config.connect_timeout_s if timeout is None else timeout
        names = [peer] if peer is not None else self.peers()
        try:
            async with asyncio.timeout(timeout):
                for name in names:
                    while True:
                        if name in self.failures:
                            raise self.failures[name]
                        entry = self._peers.get(name)
                        if entry is None:
                            raise MediaError(f"no peer {name!r} in this mesh")
                        if entry.connected.is_set():
                            break
                        await asyncio.sleep(0.02)
        except TimeoutError:
            raise MediaError(f"peers {names} not connected within {timeout}s") from None

    # --- controls -----------------------------------------------------------------------------
    def set_mic(self, on: bool) -> None:
        """Mute sends silence (the stream goes on); from the desired state's `mic`."""
        self._mic = on

    @property
    def mic(self) -> bool:
        return self._mic

    def set_volume(self, volume: int) -> None:
        """0..100, linear gain on what reaches the sink (the speaker)."""
        if isinstance(volume, bool) or not isinstance(volume, int) or not 0 <= volume <= 100:
            raise MediaError(f"volume must be an integer 0..100, got {volume!r}")
        self.config.require_speaker()
        self._gain = volume / 100

    @property
    def volume(self) -> int:
        return round(self._gain * 100)

    def sending(self) -> list[EncoderInfo]:
        """What is encoded now: one entry per source and codec, with the number of peers
        it goes to and the frames encoded so far (once for all of them)."""
        return [info for b in self._broadcasts.values() for info in b.info()]

    async def stats(self) -> list[PeerAudioStats]:
        """Per-peer figures from aiortc's getStats, plus the received level since the last
        call (the sink path's RMS)."""
        out = []
        for entry in list(self._peers.values()):
            try:
                report = await entry.pc.getStats()
            except Exception as exc:  # a peer closing under us: skip it this round
                log.debug("stats for %s unavailable: %s", entry.id, exc)
                continue
            out.append(peer_stats(entry.id, report, entry, time.monotonic()))
        return out

    # --- internals ----------------------------------------------------------------------------
    async def _new_peer(self, peer: str, caps: Capabilities | None) -> Peer:
        if self._closed:
            raise MediaError("this mesh is closed")
        old = self._peers.get(peer)
        if old is not None:  # a new offer for a known peer replaces its connection
            await self._drop(old)
        self.failures.pop(peer, None)
        remote = caps if caps is not None else UNDECLARED
        send = self.config.mic and remote.audio and remote.speaker
        recv = self.config.speaker and remote.audio and remote.mic
        codecs = self._common_codecs(peer, remote) if (send or recv) else []
        track = self.source_for(peer) if send else None
        send = send and track is not None
        pc = RTCPeerConnection(self.config.rtc_configuration())
        outgoing = SendTrack(track, self._attach) if track is not None else None
        try:
            transceiver = pc.addTransceiver(outgoing or "audio", direction=DIRECTIONS[send, recv])
            frames = (
                self.config.mixer_jitter_frames
                if peer == MIXER_PARTICIPANT
                else self.config.jitter_frames
            )
            if frames != AIORTC_JITTER_FRAMES:
                set_jitter_frames(transceiver, frames)
            decoder = decode_inline(transceiver.receiver)
            if codecs:
                transceiver.setCodecPreferences([self._caps[CODEC_MIME[c].lower()] for c in codecs])
        except BaseException:
            await pc.close()
            if track is not None:
                track.stop()
            raise
        entry = Peer(peer, pc, transceiver, send, recv, outgoing=outgoing, decoder=decoder)
        pc.on("connectionstatechange", lambda: self._state_changed(entry))
        self._peers[peer] = entry
        return entry

    def _common_codecs(self, peer: str, remote: Capabilities) -> list[str]:
        theirs = known_codecs(remote.codecs) if remote.codecs else list(CODECS)
        common = [c for c in self.config.codecs if c in theirs]
        if not common:
            raise MediaError(
                f"no common codec with {peer}: we use {', '.join(self.config.codecs)}, "
                f"it declares {', '.join(remote.codecs) or 'none we know'}"
            )
        return common

    def _negotiated(self, entry: Peer, local_sdp: str, remote: SessionDescription) -> None:
        local = sdp.codec_names(sdp.parse_own(local_sdp))
        entry.send_codec, entry.recv_codec = sdp.negotiated(local, sdp.codec_names(remote))
        direction = entry.transceiver.currentDirection
        entry.send = direction in ("sendonly", "sendrecv")
        entry.recv = direction in ("recvonly", "sendrecv")
        if entry.outgoing is not None:
            # aiortc sends with the same codec (the first of ours the answer holds); the
            # sender reads its first frame only once connected, after this.
            entry.outgoing.codec = entry.send_codec
        if entry.recv and entry.decoder is not None:
            entry.decoder.deliver = lambda frame: self._deliver(entry, frame)

    def _attach(self, feed: SendTrack) -> Broadcast:
        """A sender's first read: join (or start) the Broadcast of its source."""
        source = feed.source
        key = source.shared if isinstance(source, SharedTrack) else source
        broadcast = self._broadcasts.get(key)
        if broadcast is None:

            def closed(done: Broadcast) -> None:
                if self._broadcasts.get(key) is done:
                    del self._broadcasts[key]

            broadcast = Broadcast(source, self.config.opus_kbps, lambda: self._mic, closed)
            self._broadcasts[key] = broadcast
        elif broadcast.source is not source:
            source.stop()  # a spare subscription to a SharedSource already read: never used
        feed.handed_over()
        codec = feed.codec if feed.codec in ENCODED else None
        if codec is None:
            log.info("sending %s audio encoded by aiortc (per peer)", feed.codec or "unknown")
        broadcast.join(feed, codec)
        return broadcast

    def _still_current(self, entry: Peer) -> None:
        if self._peers.get(entry.id) is not entry:
            raise MediaError(f"peer {entry.id} left during negotiation")

    def _deliver(self, entry: Peer, frame: av.AudioFrame) -> None:
        """A decoded frame of one peer (from its InlineDecoder, as it is decoded) → 48 kHz
        mono → volume (and ducking, while an announcement plays) → level → sink."""
        if self._peers.get(entry.id) is not entry:
            return  # dropped: its connection is closing
        try:
            for data in entry.normalizer(frame):
                pts = entry.counters.samples  # the frame's start in this peer's stream
                gain = self._gain * self.ducking.gain()
                if gain == 1.0 and is_internal(frame):
                    frame.pts, frame.time_base = pts, TIME_BASE  # handed on as it is
                    out = frame
                else:
                    data = scale(data, gain)
                    out = make_frame(data, pts)
                entry.counters.add_audio(data)
                self.sink.on_frame(entry.id, out)
        except Exception:  # a broken sink or frame must not stop the audio (or others')
            if not entry.sink_failed:
                entry.sink_failed = True
                log.exception("audio from %s could not be delivered", entry.id)

    def _watch(self, entry: Peer) -> None:
        entry.tasks.append(asyncio.create_task(self._watchdog(entry)))

    async def _watchdog(self, entry: Peer) -> None:
        timeout = self.config.connect_timeout_s
        try:
            await asyncio.wait_for(entry.connected.wait(), timeout)
        except TimeoutError:
            await self._fail(
                entry,
                MediaError(
                    f"peer {entry.id}: not connected within {timeout:g}s "
                    f"(ICE {entry.pc.iceConnectionState}, signalling {entry.pc.signalingState})"
                ),
            )

    def _state_changed(self, entry: Peer) -> None:
        state = entry.pc.connectionState
        if state == "connected":
            entry.connected.set()
        elif state == "failed" and self._peers.get(entry.id) is entry:
            error = MediaError(f"peer {entry.id}: connection failed (ICE or DTLS)")
            entry.tasks.append(asyncio.ensure_future(self._fail(entry, error)))
        elif state == "closed" and self._peers.get(entry.id) is entry:
            # aiortc closes a connection whose remote closed DTLS: the peer went away.
            log.info("peer %s closed its connection", entry.id)
            entry.tasks.append(asyncio.ensure_future(self._drop(entry)))

    async def _fail(self, entry: Peer, error: MediaError) -> None:
        if self._peers.get(entry.id) is not entry:
            return
        log.warning("%s", error)
        # Out of the mesh and reported at once; closing the connection can take a while.
        self.failures[entry.id] = error
        del self._peers[entry.id]
        if self.on_peer_failed is not None:
            try:
                self.on_peer_failed(entry.id, error)
            except Exception:  # the caller's bug must not kill this task silently
                log.exception("on_peer_failed(%s) raised", entry.id)
        await self._drop(entry)

    async def _drop(self, entry: Peer) -> None:
        if self._peers.get(entry.id) is entry:
            del self._peers[entry.id]
        current = asyncio.current_task()
        for task in entry.tasks:
            if task is not current:
                task.cancel()
        with contextlib.suppress(Exception):
            await entry.pc.close()
        if entry.outgoing is not None and entry.outgoing.attached:
            entry.outgoing.stop()  # aiortc does when its sender ran; leaves the Broadcast
        for task in entry.tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def _ice_candidate(peer: str, line: str, mid: str) -> RTCIceCandidate:
    """A trickled candidate as browsers send it ("candidate:..." or the bare value)."""
    try:
        ice = candidate_from_sdp(line.removeprefix("a=").removeprefix("candidate:"))
    except Exception as exc:  # aiortc's parser asserts and indexes
        raise MediaError(f"bad ICE candidate from {peer}: {line[:80]!r}") from exc
    ice.sdpMid = mid
    return ice


def set_jitter_frames(transceiver: RTCRtpTransceiver, frames: int) -> None:
    """Swap aiortc's audio jitter buffer (capacity 16, prefetch 4, fixed in RTCRtpReceiver's
    constructor, no setting) for one with `frames` prefetch (0: InOrderBuffer), before any
    packet arrives. aiortc is pinned (1.16.0); a version without the attribute is
    refused, not ignored."""
    attr = "_RTCRtpReceiver__jitter_buffer"
    receiver = transceiver.receiver
    if not isinstance(getattr(receiver, attr, None), JitterBuffer):
        raise MediaError(
            f"this aiortc has no jitter buffer to tune; leave jitter_frames at "
            f"{AIORTC_JITTER_FRAMES}"
        )
    buffer = InOrderBuffer() if frames == 0 else JitterBuffer(capacity=16, prefetch=frames)
    setattr(receiver, attr, buffer)


def _media_error(what: str, exc: Exception) -> MediaError:
    """Our own errors already say what and who; aiortc's get the context added."""
    if isinstance(exc, MediaError):
        return exc
    return MediaError(f"{what}: {type(exc).__name__}: {exc}")
