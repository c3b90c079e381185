"""A simulated device playing announcements (docs/protocol.md §14).

The `announce` command opens a playback; its chunks (dev/{id}/ann) fill a buffer that
plays one 20 ms frame every 20 ms, decoded to 48 kHz mono, into the device's speaker:
the same sink its meeting audio goes to (as stream `announce`), so what a device heard
can be analysed. While it plays, the meeting is ducked (the driver's `duck`). Acks:
`accepted` (done: false) when playback starts, `ok` with `played_ms` after the last
frame, `failed` with `interrupted by <ann>` when another announcement's command cuts it
off, `no audio` when no chunk came within 2 s of the command (or of the last one).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from fleet.media.clips import ClipDecoder
from fleet.media.frames import FRAME_S, make_frame
from fleet.media.sinks import AudioSink
from fleet.protocol.messages import Ack, AckCode, AnnounceArgs, AnnounceChunk

log = logging.getLogger(__name__)

ANNOUNCE_STREAM = "announce"  # the stream name announcements have in the device's sink
NO_AUDIO_S = 2.0
MAX_BUFFERED_FRAMES = 250  # 5 s: beyond what a paced sender ever has in flight
HISTORY = 32


@dataclass
class Playback:
    """One announcement on this device, and what became of it."""

    ann: str
    command_id: str
    args: AnnounceArgs
    commanded_at: float  # time.monotonic() of its command
    frames: collections.deque[tuple[str, bytes]] = field(default_factory=collections.deque)
    next_seq: int = 0
    last_received: bool = False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    first_audio_at: float | None = None  # time.monotonic() of its first frame played
    played_frames: int = 0
    outcome: str = "pending"  # played, failed: detail
    task: asyncio.Task[None] | None = None


class AnnouncePlayer:
    def __init__(
        self,
        send_ack: Callable[[Ack], Awaitable[None]],
        sink: Callable[[], AudioSink],
        duck: Callable[[bool], None],
    ) -> None:
        self._send_ack = send_ack
        self._sink = sink
        self._duck = duck
        self.current: Playback | None = None
        self.history: collections.deque[Playback] = collections.deque(maxlen=HISTORY)
        self._pts = 0
        # Chunks that came before their command (a broker may deliver two topics out of
        # order): kept for the newest such announcement only, until its command comes.
        self._early: tuple[str, list[AnnounceChunk]] | None = None

    def by_ann(self, ann: str) -> Playback | None:
        for playback in reversed(self.history):
            if playback.ann == ann:
                return playback
        return None

    async def command(self, command_id: str, args: AnnounceArgs) -> None:
        """The `announce` command: a new playback, which cuts off the one playing."""
        previous = self.current
        if previous is not None and previous.ann == args.ann:
            return  # the same one again (a command delivered twice): it plays on
        playback = Playback(args.ann, command_id, args, time.monotonic())
        self.current = playback
        self.history.append(playback)
        if previous is not None and previous.task is not None and not previous.task.done():
            previous.task.cancel()
            await self._end(previous, ok=False, detail=f"interrupted by {args.ann}")
        early, self._early = self._early, None
        for chunk in early[1] if early is not None and early[0] == args.ann else []:
            self.chunk(chunk)
        playback.task = asyncio.create_task(self._play(playback), name=f"announce-{args.ann}")

    def chunk(self, chunk: AnnounceChunk) -> None:
        playback = self.current
        if playback is None or playback.ann != chunk.ann:
            if self.by_ann(chunk.ann) is not None:
                return  # of one that is over (cut off): dropped
            if self._early is None or self._early[0] != chunk.ann:
                self._early = (chunk.ann, [])
            if len(self._early[1]) < MAX_BUFFERED_FRAMES // 10:
                self._early[1].append(chunk)
            return
        if chunk.seq != playback.next_seq:
            log.warning(
                "announcement %s: chunk %d, expected %d", chunk.ann, chunk.seq, playback.next_seq
            )
        playback.next_seq = chunk.seq + 1
        for frame in chunk.frames:
            try:
                data = base64.b64decode(frame, validate=True)
            except (binascii.Error, ValueError):
                data = b""  # played as silence
            if len(playback.frames) < MAX_BUFFERED_FRAMES:
                playback.frames.append((chunk.codec.value, data))
        playback.last_received = playback.last_received or chunk.last
        playback.arrived.set()

    async def close(self) -> None:
        playback = self.current
        if playback is not None and playback.task is not None:
            playback.task.cancel()

    async def _play(self, playback: Playback) -> None:
        decoder: ClipDecoder | None = None
        ducked = False
        try:
            if not await self._wait_audio(playback):
                await self._end(playback, ok=False, detail="no audio")
                return
            await self._send_ack(
                Ack(
                    id=playback.command_id,
                    ok=True,
                    code=AckCode.ACCEPTED,
                    done=False,
                    detail="playing",
                )
            )
            self._duck(True)
            ducked = True
            sink = self._sink()
            clock = time.monotonic()
            while True:
                if not playback.frames:
                    if playback.last_received:
                        break
                    if not await self._wait_audio(playback):
                        await self._end(playback, ok=False, detail="no audio")
                        return
                    clock = max(clock, time.monotonic())
                codec, data = playback.frames.popleft()
                if decoder is None:
                    decoder = ClipDecoder(codec)
                samples = decoder.decode(data) if data else np.zeros(960, dtype=np.int16)
                if samples.size:
                    if playback.first_audio_at is None:
                        playback.first_audio_at = time.monotonic()
                    sink.on_frame(ANNOUNCE_STREAM, make_frame(samples, self._pts))
                    self._pts += samples.size
                playback.played_frames += 1
                clock += FRAME_S
                delay = clock - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self._end(playback, ok=True)
        finally:
            # Back up, unless another one has started meanwhile (and ducks on its own).
            if ducked and (self.current is None or self.current is playback):
                self._duck(False)

    async def _wait_audio(self, playback: Playback) -> bool:
        playback.arrived.clear()
        if playback.frames:
            return True
        try:
            async with asyncio.timeout(NO_AUDIO_S):
                await playback.arrived.wait()
        except TimeoutError:
            return False
        return True

    async def _end(self, playback: Playback, ok: bool, detail: str = "") -> None:
        if playback.outcome != "pending":
            return
        if ok:
            played_ms = round(playback.played_frames * FRAME_S * 1000)
            playback.outcome = "played"
            ack = Ack(
                id=playback.command_id, ok=True, code=AckCode.OK, result={"played_ms": played_ms}
            )
        else:
            playback.outcome = f"failed: {detail}"
            ack = Ack(id=playback.command_id, ok=False, code=AckCode.FAILED, detail=detail)
        if self.current is playback:
            self.current = None
        await self._send_ack(ack)
