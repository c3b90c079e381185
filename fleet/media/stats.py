"""aiortc getStats reports → the telemetry's PeerAudioStats (fleet.protocol.messages).

aiortc facts (1.16): inbound-rtp `jitter` is in RTP clock units of the received codec
(48 kHz Opus, 8 kHz G.711), so it is divided by that rate; `roundTripTime` is only on
remote-inbound-rtp, i.e. on the sending side, and only after the first RTCP receiver
report (about 2 s in); transport stats count every byte (RTP, RTCP, DTLS) of the peer.

`loss`, `level` and `bitrate_kbps` are over the interval since the previous figure, as
docs/protocol.md §7 defines them; calls closer than MIN_INTERVAL_S apart get the previous
figures again (a rate over a few milliseconds means nothing).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fleet.media.frames import FULL_SCALE
from fleet.protocol.messages import PeerAudioStats

if TYPE_CHECKING:
    from aiortc.stats import RTCStatsReport

    from fleet.media.mesh import Peer

MIN_INTERVAL_S = 0.25
CLOCK_RATE = {"opus": 48_000, "pcmu": 8_000, "pcma": 8_000}


@dataclass
class Window:
    """The interval figures, and the counters they were taken from."""

    at: float
    received: int = 0
    lost: int = 0
    bytes_received: int = 0
    level: float | None = None
    loss: float | None = None
    bitrate_kbps: float | None = None


@dataclass
class PeerCounters:
    samples: int = 0  # received (48 kHz) samples handed to the sink, ever
    frames: int = 0
    first_audio_at: float | None = None  # time.monotonic() of the first received audio
    _sumsq: float = 0.0  # since the last window
    _count: int = 0
    _window: Window | None = None

    def add_audio(self, data: np.ndarray) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        x = data.astype(np.float32)
        self._sumsq += float(np.dot(x, x)) / (FULL_SCALE * FULL_SCALE)
        self._count += data.size
        self.samples += data.size
        self.frames += 1

    def window(self, now: float, since: float, received: int, lost: int, nbytes: int) -> Window:
        last = self._window or Window(at=since)
        if self._window is not None and now - last.at < MIN_INTERVAL_S:
            return last
        got, missed = received - last.received, max(0, lost - last.lost)
        span = now - last.at
        current = Window(
            at=now,
            received=received,
            lost=lost,
            bytes_received=nbytes,
            level=min(1.0, math.sqrt(self._sumsq / self._count)) if self._count else 0.0,
            loss=missed / (got + missed) if got + missed else None,
            bitrate_kbps=max(0, nbytes - last.bytes_received) * 8 / span / 1000
            if span > 0
            else None,
        )
        self._sumsq, self._count = 0.0, 0
        self._window = current
        return current


def peer_stats(peer: str, report: RTCStatsReport, entry: Peer, now: float) -> PeerAudioStats:
    by_type: dict[str, Any] = {}
    for stat in report.values():
        by_type.setdefault(stat.type, stat)
    inbound = by_type.get("inbound-rtp")
    outbound = by_type.get("outbound-rtp")
    remote_in = by_type.get("remote-inbound-rtp")
    transport = by_type.get("transport")

    received = inbound.packetsReceived if inbound is not None else 0
    lost = max(0, inbound.packetsLost) if inbound is not None else 0
    jitter_ms = None
    if inbound is not None and entry.recv_codec in CLOCK_RATE:
        jitter_ms = inbound.jitter / CLOCK_RATE[entry.recv_codec] * 1000
    rtt = remote_in.roundTripTime if remote_in is not None else None
    nbytes = transport.bytesReceived if transport is not None else 0
    window = entry.counters.window(now, entry.created, received, lost, nbytes)
    return PeerAudioStats(
        peer=peer,
        packets_sent=outbound.packetsSent if outbound is not None else 0,
        packets_received=received,
        packets_lost=lost,
        # A link that only sends has no receive figures.
        loss=window.loss if entry.recv else None,
        jitter_ms=jitter_ms,
        rtt_ms=rtt * 1000 if rtt is not None else None,
        level=window.level if entry.recv else None,
        bitrate_kbps=window.bitrate_kbps if entry.recv else None,
        codec=(entry.send_codec if entry.send else entry.recv_codec if entry.recv else None),
    )
