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

Packets carry no RFC 6464 audio level (aiortc adds that header extension only to frames it
encodes itself); nothing in a mesh reads it.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import Callable
from dataclasses import dataclass

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from fleet.media.errors import MediaError
from fleet.media.frames import FRAME_SAMPLES, SAMPLE_RATE

log = logging.getLogger(__name__)

G711_RATE = 8_000
G711_FRAME = 160  # 20 ms at 8 kHz
G711_CODECS = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}
ENCODED = ("opus", *G711_CODECS)  # what the mesh encodes itself; anything else: aiortc
# Packets a sender may have waiting before the oldest is dropped: a sender that stalls
# for more than this (20 ms each) gets the newest audio, not a growing delay.
MAX_QUEUED = 10


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

    def encode(self, frame: av.AudioFrame) -> list[av.Packet]:
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
    def __init__(self, encoder: FrameEncoder | None) -> None:
        self.encoder = encoder
        self.feeds: set[SendTrack] = set()
        self.frames = 0


class Broadcast:
    """One source, read once: each frame gated, encoded once per codec in use, queued for
    every sender of that codec. Runs from the first sender's first read until the source
    ends or the last sender leaves; then it stops the source track it was given."""

    def __init__(
        self,
        source: MediaStreamTrack,
        make_encoder: Callable[[str], FrameEncoder],
        mic_on: Callable[[], bool],
        on_closed: Callable[[Broadcast], None],
    ) -> None:
        self.source = source
        self._make_encoder = make_encoder
        self._mic_on = mic_on
        self._on_closed = on_closed
        self._lanes: dict[str | None, _Lane] = {}
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def join(self, feed: SendTrack, codec: str | None) -> None:
        if self.closed:
            feed.deliver(None)
            return
        lane = self._lanes.get(codec)
        if lane is None:
            encoder = self._make_encoder(codec) if codec is not None else None
            lane = self._lanes[codec] = _Lane(encoder)
        lane.feeds.add(feed)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

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

    async def _run(self) -> None:
        try:
            while True:
                try:
                    frame = await self.source.recv()
                except MediaStreamError:
                    break
                if not self._mic_on():
                    frame = silence_like(frame)
                for lane in list(self._lanes.values()):
                    items = lane.encoder.encode(frame) if lane.encoder is not None else [frame]
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
        self._queue: asyncio.Queue[av.Packet | av.AudioFrame | None] = asyncio.Queue()

    @property
    def attached(self) -> bool:
        return self._broadcast is not None

    def handed_over(self) -> None:
        """The source is now the Broadcast's (or was a spare one, stopped): not ours to stop."""
        self._owns_source = False

    async def recv(self) -> av.Packet | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._broadcast is None:
            self._broadcast = self._attach(self)
        item = await self._queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        return item

    def deliver(self, item: av.Packet | av.AudioFrame | None) -> None:
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
