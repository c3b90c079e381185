"""Receiving: decode in the event loop instead of aiortc's decoder thread.

aiortc's RTCRtpReceiver hands every reassembled frame to a decoder thread of its own
(a `queue.Queue` put, a thread wake-up, a GIL hand-off) and the thread hands each decoded
frame back with `asyncio.run_coroutine_threadsafe` (a coroutine, a future and a wake-up of
the loop's self-pipe). For a 20 ms audio frame that hand-off costs more than the decode:
with one stream per member (a mixed room) it was the hottest line of the profile. So each
receiver's decoder queue is replaced by an `InlineDecoder`, which decodes where the packet
arrives and hands the frame to the mesh (or, with no one to hand it to, puts it on the
track's queue):

- Opus is decoded straight to mono (libopus folds the channels), at 48 kHz: no stereo
  frame to fold in numpy afterwards.
- G.711 is decoded as aiortc does (8 kHz mono); `frames.Normalizer` resamples it.

`InOrderBuffer` stands in for the jitter buffer where none is wanted (a mixer's stream,
`MediaConfig.mixer_jitter_frames` 0): aiortc's releases a frame only once the packet after
it has arrived, so even its shallowest costs a frame (20 ms).

aiortc still starts its decoder thread; it blocks in `get()` here until the receiver
stops, then ends the track as it always does. aiortc is pinned (1.16.0); a version whose
receiver has no decoder queue to replace is refused with a clear error, not ignored.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
from collections.abc import Callable
from typing import Any

import av
from aiortc import RTCRtpReceiver
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_gt

from fleet.media.errors import MediaError
from fleet.media.frames import SAMPLE_RATE

log = logging.getLogger(__name__)

QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
OPUS_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class MonoOpusDecoder:
    """Opus → 48 kHz mono s16 frames (aiortc's own decoder gives stereo)."""

    def __init__(self) -> None:
        self._context = av.CodecContext.create("libopus", "r")
        self._context.format = "s16"
        self._context.layout = "mono"
        self._context.sample_rate = SAMPLE_RATE

    def decode(self, encoded: Any) -> list[av.AudioFrame]:
        packet = av.Packet(encoded.data)
        packet.pts = encoded.timestamp
        packet.time_base = OPUS_TIME_BASE
        return self._context.decode(packet)


class InlineDecoder:
    """What RTCRtpReceiver takes for its decoder queue: `put((codec, frame))` decodes at
    once and queues the audio on the receiver's track; `put(None)` (the receiver
    stopping) releases aiortc's idle decoder thread, which then ends the track."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self._receiver = receiver
        # Set: each frame goes straight there (the mesh's sink path), not through the
        # track's queue and a reading task.
        self.deliver: Callable[[av.AudioFrame], None] | None = None
        self._decoder: Any = None
        self._codec: str | None = None
        self._stopped = threading.Event()
        self._failed = False
        self.frames = 0

    def put(self, item: tuple[RTCRtpCodecParameters, Any] | None) -> None:
        if item is None:
            self._stopped.set()
            return
        codec, encoded = item
        if codec.name != self._codec:
            self._decoder = decoder_for(codec)
            self._codec = codec.name
        try:
            frames = self._decoder.decode(encoded)
        except av.FFmpegError as exc:  # a corrupt frame: skipped, the stream goes on
            if not self._failed:
                self._failed = True
                log.warning("cannot decode a %s frame: %s", codec.name, exc)
            return
        self.frames += len(frames)
        if self.deliver is not None:
            for frame in frames:
                self.deliver(frame)
            return
        track = self._receiver.track  # typed as always there, but None until negotiated
        if not isinstance(track, RemoteStreamTrack):
            return
        queue: asyncio.Queue[Any] = track._queue
        for frame in frames:
            queue.put_nowait(frame)

    def get(self) -> None:
        """aiortc's decoder thread waits here for the receiver to stop."""
        self._stopped.wait()


class InOrderBuffer:
    """A jitter buffer of no depth for audio (one packet a frame): each packet is played
    as it arrives; one older than the last played (late, or repeated) is dropped."""

    def __init__(self) -> None:
        self._last: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None and not uint16_gt(seq, self._last):
            return False, None
        self._last = seq
        # aiortc's receiver sets the depayloaded payload as an undeclared attribute
        data: bytes = packet._data  # type: ignore[attr-defined]
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def decoder_for(codec: RTCRtpCodecParameters) -> Any:
    if codec.name.lower() == "opus":
        return MonoOpusDecoder()
    return get_decoder(codec)


def decode_inline(receiver: RTCRtpReceiver) -> InlineDecoder:
    """Swap `receiver`'s decoder queue for an InlineDecoder, before it starts receiving."""
    if not hasattr(receiver, QUEUE_ATTR):
        raise MediaError("this aiortc has no receiver decoder queue to replace (pinned 1.16.0)")
    inline = InlineDecoder(receiver)
    setattr(receiver, QUEUE_ATTR, inline)
    return inline
