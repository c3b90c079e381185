"""Endpointing: where a speaker's turn starts and ends, from pocketsphinx's WebRTC VAD.

One `Endpointer` per remote speaker. A turn starts after `start_s` of voiced audio (the
moment barge-in acts on) and ends after `end_s` of unvoiced audio (the speaker has
finished); `preroll_s` before the start is kept so the first phoneme is not lost.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pocketsphinx import Vad

from fleet.media.frames import SAMPLE_RATE


@dataclass(frozen=True)
class EndpointConfig:
    aggressiveness: int = 2  # WebRTC VAD mode, 0 (loose) .. 3 (strict)
    start_s: float = 0.09
    end_s: float = 0.45
    preroll_s: float = 0.3
    max_turn_s: float = 12.0
    min_turn_s: float = 0.25  # shorter voiced bursts (a cough, a click) are no turn


@dataclass
class Utterance:
    samples: np.ndarray  # 48 kHz mono int16, with the pre-roll
    start: float  # time.monotonic() the speech started (as it reached us)
    end: float  # ... and ended


class Endpointer:
    def __init__(
        self,
        on_start: Callable[[float], None],
        on_turn: Callable[[Utterance], None],
        config: EndpointConfig | None = None,
    ) -> None:
        self.config = c = config or EndpointConfig()
        self._vad = Vad(c.aggressiveness, SAMPLE_RATE)
        self._frame = self._vad.frame_bytes // 2  # samples per VAD frame (30 ms)
        frame_s = self._frame / SAMPLE_RATE
        self._start_frames = max(1, round(c.start_s / frame_s))
        self._end_frames = max(1, round(c.end_s / frame_s))
        self._max_frames = round(c.max_turn_s / frame_s)
        self._frame_s = frame_s
        self._on_start, self._on_turn = on_start, on_turn
        self._pending = np.zeros(0, dtype=np.int16)
        self._preroll: collections.deque[np.ndarray] = collections.deque(
            maxlen=max(1, round(c.preroll_s / frame_s))
        )
        self._voiced_run = 0
        self._unvoiced_run = 0
        self._turn: list[np.ndarray] | None = None
        self._turn_start = 0.0
        self._turn_voiced = 0

    @property
    def in_turn(self) -> bool:
        return self._turn is not None

    def feed(self, samples: np.ndarray, now: float) -> None:
        """48 kHz samples that arrived at `now` (time.monotonic())."""
        data = np.concatenate([self._pending, samples]) if self._pending.size else samples
        n = data.size // self._frame
        # The k-th complete frame ended (n - 1 - k) frames before the last sample's arrival.
        for k in range(n):
            chunk = data[k * self._frame : (k + 1) * self._frame]
            at = now - (n - 1 - k) * self._frame_s - (data.size - n * self._frame) / SAMPLE_RATE
            self._step(chunk, self._vad.is_speech(chunk.tobytes()), at)
        self._pending = data[n * self._frame :].copy()

    def _step(self, chunk: np.ndarray, voiced: bool, at: float) -> None:
        if self._turn is None:
            self._preroll.append(chunk)
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= self._start_frames:
                self._turn = list(self._preroll)
                self._turn_start = at - self._voiced_run * self._frame_s
                self._turn_voiced = self._voiced_run
                self._unvoiced_run = 0
                self._preroll.clear()
                self._on_start(self._turn_start)
            return
        self._turn.append(chunk)
        if voiced:
            self._turn_voiced += 1
            self._unvoiced_run = 0
        else:
            self._unvoiced_run += 1
        if self._unvoiced_run >= self._end_frames or len(self._turn) >= self._max_frames:
            self._finish(at - self._unvoiced_run * self._frame_s)

    def _finish(self, end: float) -> None:
        turn, self._turn = self._turn or [], None
        self._voiced_run = 0
        if self._turn_voiced * self._frame_s < self.config.min_turn_s:
            return
        # Keep a little of the trailing silence: decoders like a clean end.
        keep = len(turn) - max(0, self._unvoiced_run - round(0.2 / self._frame_s))
        self._on_turn(Utterance(np.concatenate(turn[:keep]), self._turn_start, end))
