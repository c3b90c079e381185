"""Sending: each source is read once and encoded once per codec, for every peer it goes to.

Left to itself, aiortc encodes in every RTCRtpSender: one encoder per peer connection, run
in a thread pool, Opus always 48 kHz stereo at 96 kbit/s (our mono audio upmixed first),
plus an RFC 6465 audio level computed per frame in pure Python (as much CPU as the Opus
encode). Its senders also take ready packets: a track may return `av.Packet`s, which
RTCRtpSender passes through its encoder's `pack()` (the path aiortc's own MediaPlayer
uses for pre-encoded media) into RTP as they are, each sender with its own SSRC, sequence
numbers and random timestamp origin added to the packet's pts. So the mesh hands its
senders packets:

- Opus is encoded mono, at `MediaConfig.opus_kbps` (32 kbit/s: speech). The SDP still says
  opus/48000/2, as RFC 7587 requires; mono travels in band (each packet's TOC byte) and
  every Opus decoder, aiortc's included, decodes it (to two equal channels).
- G.711 (PCMU, PCMA) is resampled to 8 kHz and encoded as aiortc would.
- One `Broadcast` per source reads it once, applies the mic gate (silence of the same
  shape while muted), encodes once per codec in use and queues the packet for every
  sender of that codec: N peers cost one encode, not N. It starts with the first sender
  that reads and stops (its source with it) when the last one has gone.

A source that repeats (a whole-Hz `ToneSource`, with or without latency markers: its
`repeats()`) is not encoded at all while it plays: its first two periods are encoded once
per process, codec and bitrate (`looped_packets`), and the Broadcast replays them, paced
by the source's clock (`PacedSource.next_frame`) without rendering a sample. A 20 ms Opus
encode costs about 240 µs here, so this is what lets one machine simulate a big room of
talking devices (fleet/media/README.md).

Packets carry no RFC 6464 audio level (aiortc adds that header extension only to frames it
encodes itself); nothing in a mesh reads it.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from fleet.media.errors import MediaError
from fleet.media.frames import FRAME_SAMPLES, SAMPLE_RATE, make_frame, next_audio_frame
from fleet.media.sources import PacedSource, SharedTrack, SourceLoop

log = logging.getLogger(__name__)

G711_RATE = 8_000
G711_FRAME = 160  # 20 ms at 8 kHz
G711_CODECS: dict[str, Literal["pcm_mulaw", "pcm_alaw"]] = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}
ENCODED = ("opus", *G711_CODECS)  # what the mesh encodes itself; anything else: aiortc
# Packets a sender may have waiting before the oldest is dropped: a sender that stalls
# for more than this (20 ms each) gets the newest audio, not a growing delay.
MAX_QUEUED = 10
SILENT_FRAME = np.zeros(FRAME_SAMPLES, dtype=np.int16)


class FrameEncoder:
    """48 kHz mono s16 frames of one stream → packets of one codec, stamped with their
    place in the stream (pts in the codec's clock), ready for aiortc's `pack()`."""

    def __init__(self, codec: str, opus_kbps: int = 32) -> None:
        self.codec = codec
        if codec == "opus":
            context = av.CodecContext.create("libopus", "w")
            context.bit_rate = opus_kbps * 1000
            context.options = {"application": "voip"}
            rate = SAMPLE_RATE
            self._resampler: av.AudioResampler | None = None
        elif codec in G711_CODECS:
            context = av.CodecContext.create(G711_CODECS[codec], "w")
            rate = G711_RATE
            self._resampler = av.AudioResampler(
                format="s16", layout="mono", rate=G711_RATE, frame_size=G711_FRAME
            )
        else:
            raise MediaError(f"no encoder for {codec!r}: the mesh encodes {', '.join(ENCODED)}")
        context.format = "s16"
        context.layout = "mono"
        context.sample_rate = rate
        context.time_base = fractions.Fraction(1, rate)
        self._context = context
        self._time_base = fractions.Fraction(1, rate)
        self._pts = 0  # the next packet's first sample, in the codec's clock
        # Frames other than 48 kHz mono s16, 960 samples (a caller's own track) are brought to it.
        self._conform: av.AudioResampler | None = None

    def encode(self, frame: av.AudioFrame) -> list[Packet]:
        out = []
        for piece in self._conformed(frame):
            parts = self._resampler.resample(piece) if self._resampler is not None else [piece]
            for part in parts:
                for packet in self._context.encode(part):
                    packet.pts = self._pts
                    packet.time_base = self._time_base
                    self._pts += packet.duration or part.samples
                    out.append(packet)
        return out

    def _conformed(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        if (
            frame.samples == FRAME_SAMPLES
            and frame.sample_rate == SAMPLE_RATE
            and frame.format.name == "s16"
            and frame.layout.name == "mono"
        ):
            return [frame]
        if self._conform is None:
            self._conform = av.AudioResampler(
                format="s16", layout="mono", rate=SAMPLE_RATE, frame_size=FRAME_SAMPLES
            )
        return self._conform.resample(frame)


class EncodedChunk:
    """One ready packet as RTCRtpSender's `pack()` reads it (bytes, pts, time_base), cheaper
    than an av.Packet and shared by every sender (each adds its own RTP timestamp origin)."""

    __slots__ = ("data", "pts", "time_base")

    def __init__(self, data: bytes, pts: int, time_base: fractions.Fraction) -> None:
        self.data, self.pts, self.time_base = data, pts, time_base

    def __bytes__(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class LoopedPackets:
    """A looping source's packets for one codec: frame k is `payloads[k]` for k below two
    periods, then `payloads[period + k % period]`; `silence` is what a muted mic sends."""

    period: int
    payloads: tuple[bytes, ...]
    silence: bytes
    step: int  # samples per packet in the codec's clock
    time_base: fractions.Fraction

    def packet(self, frame: int, muted: bool) -> EncodedChunk:
        if muted:
            data = self.silence
        elif frame < len(self.payloads):
            data = self.payloads[frame]
        else:
            data = self.payloads[self.period + frame % self.period]
        return EncodedChunk(data, frame * self.step, self.time_base)


if TYPE_CHECKING:
    # Generic over its stream in av's stubs only (not subscriptable at run time); an
    # encoder's packets belong to no stream.
    Packet: TypeAlias = av.Packet[Any]
    Sendable: TypeAlias = Packet | av.AudioFrame | EncodedChunk
_LOOPS: dict[tuple[object, ...], LoopedPackets] = {}


def looped_packets(
    source: PacedSource, loop: SourceLoop, codec: str, opus_kbps: int
) -> LoopedPackets:
    """Two periods of `source` encoded once for the process (then replayed by every device
    that sends the same sound), and a packet of encoded silence."""
    key = (*loop.key, codec, opus_kbps)
    cached = _LOOPS.get(key)
    if cached is not None:
        return cached
    frames = 2 * loop.period
    encoder = FrameEncoder(codec, opus_kbps)
    packets: list[Packet] = []
    index = 0
    # Codecs with a delay (G.711's resampler) give their packets a little late: encode on
    # until there are as many packets as frames.
    while len(packets) < frames:
        samples = source.render(index, FRAME_SAMPLES)
        if samples is None:  # a source that repeats has no end
            raise MediaError("a repeating source ended")
        packets += encoder.encode(make_frame(samples, index))
        index += FRAME_SAMPLES
    mute = FrameEncoder(codec, opus_kbps)
    quiet = [p for _ in range(4) for p in mute.encode(make_frame(SILENT_FRAME, 0))]
    looped = LoopedPackets(
        period=loop.period,
        payloads=tuple(bytes(p) for p in packets[:frames]),
        silence=bytes(quiet[-1]),
        step=packets[0].duration or FRAME_SAMPLES,
        time_base=packets[0].time_base,
    )
    _LOOPS[key] = looped
    return looped


def silence_like(frame: av.AudioFrame) -> av.AudioFrame:
    """A frame of zeros with `frame`'s shape and stamp: what a muted microphone sends."""
    silent = av.AudioFrame(
        format=frame.format.name, layout=frame.layout.name, samples=frame.samples
    )
    for plane in silent.planes:
        plane.update(bytes(plane.buffer_size))
    silent.sample_rate = frame.sample_rate
    silent.pts = frame.pts
    silent.time_base = frame.time_base
    return silent


@dataclass(frozen=True)
class EncoderInfo:
    """One codec of one source, as the mesh sends it (MediaMesh.sending())."""

    codec: str | None  # None: frames handed to aiortc, which encodes per sender
    senders: int  # peers reading it now
    frames: int  # source frames encoded (or passed) so far, once for all those senders


class _Lane:
    def __init__(self, encoder: FrameEncoder | None, looped: LoopedPackets | None) -> None:
        self.encoder = encoder
        self.looped = looped
        self.feeds: set[SendTrack] = set()
        self.frames = 0


class Broadcast:
    """One source, read once: each frame gated, encoded once per codec in use (or, for a
    source that loops, its packets replayed), queued for every sender of that codec. Runs
    from the first sender's first read until the source ends or the last sender leaves;
    then it stops the source track it was given."""

    def __init__(
        self,
        source: MediaStreamTrack,
        opus_kbps: int,
        mic_on: Callable[[], bool],
        on_closed: Callable[[Broadcast], None],
    ) -> None:
        self.source = source
        self._opus_kbps = opus_kbps
        self._mic_on = mic_on
        self._on_closed = on_closed
        self._lanes: dict[str | None, _Lane] = {}
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        # The source's own clock and loop, when it has them: then no frame is rendered
        # for a lane that replays packets (a SharedTrack's relay is not read at all).
        raw = source.shared.track if isinstance(source, SharedTrack) else source
        self._paced = raw if isinstance(raw, PacedSource) else None
        self._loop = self._paced.repeats() if self._paced is not None else None

    def join(self, feed: SendTrack, codec: str | None) -> None:
        if self.closed:
            feed.deliver(None)
            return
        lane = self._lanes.get(codec)
        if lane is None:
            lane = self._lanes[codec] = self._lane(codec)
        lane.feeds.add(feed)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def _lane(self, codec: str | None) -> _Lane:
        if codec is None:
            return _Lane(None, None)
        if self._paced is not None and self._loop is not None:
            return _Lane(None, looped_packets(self._paced, self._loop, codec, self._opus_kbps))
        return _Lane(FrameEncoder(codec, self._opus_kbps), None)

    def leave(self, feed: SendTrack) -> None:
        for codec, lane in list(self._lanes.items()):
            lane.feeds.discard(feed)
            if not lane.feeds:
                del self._lanes[codec]
        if not self._lanes:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self.source.stop()
        self._on_closed(self)

    def info(self) -> list[EncoderInfo]:
        return [EncoderInfo(c, len(lane.feeds), lane.frames) for c, lane in self._lanes.items()]

    async def _next(self) -> tuple[int, av.AudioFrame | None]:
        """The next frame's first sample, and the frame itself unless every lane replays."""
        if self._paced is None or self._loop is None:
            frame = await next_audio_frame(self.source)
            return frame.pts or 0, frame
        start = await self._paced.next_frame()
        if all(lane.looped is not None for lane in self._lanes.values()):
            return start, None
        samples = self._paced.render(start, FRAME_SAMPLES)
        if samples is None:
            raise MediaStreamError
        return start, make_frame(samples, start)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    start, frame = await self._next()
                except MediaStreamError:
                    break
                muted = not self._mic_on()
                if muted and frame is not None:
                    frame = silence_like(frame)
                for lane in list(self._lanes.values()):
                    items: list[EncodedChunk] | list[Packet] | list[av.AudioFrame]
                    if lane.looped is not None:
                        items = [lane.looped.packet(start // FRAME_SAMPLES, muted)]
                    elif frame is None:
                        continue  # a lane joined since _next(): from the next frame on
                    elif lane.encoder is not None:
                        items = lane.encoder.encode(frame)
                    else:
                        items = [frame]
                    lane.frames += 1
                    for feed in list(lane.feeds):
                        for item in items:
                            feed.deliver(item)
        except Exception:  # a frame the encoder refuses: the senders end, with the reason here
            log.exception("sending audio failed; the peers it went to get no more of it")
        # The source ended (or failed): every sender's track ends too, as aiortc's would.
        for lane in list(self._lanes.values()):
            for feed in list(lane.feeds):
                feed.deliver(None)
        self.close()


class SendTrack(MediaStreamTrack):
    """What one peer's RTCRtpSender reads. It holds the track `source_for` gave for that
    peer; at its first read (the connection is up, the codec negotiated) it joins the
    mesh's Broadcast of that source, handing the track over, and from then on returns
    the Broadcast's packets for its `codec` (frames if the codec is one the mesh does not
    encode). Stopping it (aiortc does when the sender ends) leaves the Broadcast."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack, attach: Callable[[SendTrack], Broadcast]) -> None:
        super().__init__()
        self.source = source
        self.codec: str | None = None  # set by the mesh once negotiated
        self._attach = attach
        self._broadcast: Broadcast | None = None
        self._owns_source = True
        self._queue: asyncio.Queue[Sendable | None] = asyncio.Queue()

    @property
    def attached(self) -> bool:
        return self._broadcast is not None

    def handed_over(self) -> None:
        """The source is now the Broadcast's (or was a spare one, stopped): not ours to stop."""
        self._owns_source = False

    # Wider than MediaStreamTrack.recv: aiortc's sender also packs EncodedChunks (`pack()`).
    async def recv(self) -> Sendable:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        if self._broadcast is None:
            self._broadcast = self._attach(self)
        item = await self._queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        return item

    def deliver(self, item: Sendable | None) -> None:
        if item is not None and self._queue.qsize() >= MAX_QUEUED:
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    def stop(self) -> None:
        super().stop()
        if self._broadcast is not None:
            self._broadcast.leave(self)
        elif self._owns_source:
            self._owns_source = False
            self.source.stop()
