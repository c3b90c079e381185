"""The simulated device's announcement player (fleet.device.announce), on its own: chunks
in, 20 ms frames into the speaker sink, acks out, ducking around it."""

from __future__ import annotations

import asyncio
import base64

import numpy as np

from fleet.announce.render import encode_frames
from fleet.device.announce import ANNOUNCE_STREAM, AnnouncePlayer
from fleet.media.analysis import hears
from fleet.media.frames import SAMPLE_RATE
from fleet.media.sinks import CaptureSink
from fleet.protocol.messages import (
    Ack,
    AckCode,
    AnnounceArgs,
    AnnounceChunk,
    AnnounceCodec,
    Priority,
)

HALF_SECOND = (np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE) * 9000).astype(
    np.int16
)


class Rig:
    def __init__(self) -> None:
        self.acks: list[Ack] = []
        self.sink = CaptureSink(keep_s=10)
        self.ducked: list[bool] = []

        async def send(ack: Ack) -> None:
            self.acks.append(ack)

        self.player = AnnouncePlayer(send, lambda: self.sink, self.ducked.append)

    def final(self, command_id: str) -> Ack | None:
        return next((a for a in self.acks if a.id == command_id and a.done), None)


def chunks(ann: str, codec: AnnounceCodec = AnnounceCodec.OPUS) -> list[AnnounceChunk]:
    frames = [base64.b64encode(f).decode() for f in encode_frames(HALF_SECOND, codec)]
    groups = [frames[n : n + 10] for n in range(0, len(frames), 10)]
    return [
        AnnounceChunk(ann=ann, seq=n, codec=codec, frames=g, last=n == len(groups) - 1)
        for n, g in enumerate(groups)
    ]


def args(ann: str, priority: Priority = Priority.NORMAL) -> AnnounceArgs:
    return AnnounceArgs(ann=ann, priority=priority, duration_ms=500)


async def until(check: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_it_plays_every_frame_acks_and_ducks_around_it() -> None:
    rig = Rig()
    await rig.player.command("c1", args("a1"))
    for chunk in chunks("a1", AnnounceCodec.PCMU):
        rig.player.chunk(chunk)
    await until(lambda: rig.final("c1") is not None)
    final = rig.final("c1")
    assert final is not None
    assert final.code is AckCode.OK
    assert final.result == {"played_ms": 500}
    assert [a.code for a in rig.acks] == [AckCode.ACCEPTED, AckCode.OK]
    assert rig.ducked == [True, False]
    played = rig.sink.samples(ANNOUNCE_STREAM)
    assert played.size > 0.4 * SAMPLE_RATE
    assert hears(played, 440)


async def test_chunks_before_their_command_and_a_repeated_command() -> None:
    rig = Rig()
    early = chunks("a2")
    rig.player.chunk(early[0])  # before its command
    await rig.player.command("c2", args("a2"))
    await rig.player.command("c2", args("a2"))  # delivered twice: it plays on
    for chunk in early[1:]:
        rig.player.chunk(chunk)
    await until(lambda: rig.final("c2") is not None)
    assert rig.final("c2") == Ack(id="c2", ok=True, code=AckCode.OK, result={"played_ms": 500})
    assert len(rig.player.history) == 1


async def test_another_command_cuts_the_one_playing_off() -> None:
    rig = Rig()
    await rig.player.command("c3", args("a3"))
    rig.player.chunk(chunks("a3")[0])
    await until(lambda: any(a.id == "c3" for a in rig.acks))
    await rig.player.command("c4", args("a4", Priority.URGENT))
    cut = rig.final("c3")
    assert cut == Ack(id="c3", ok=False, code=AckCode.FAILED, detail="interrupted by a4")
    for chunk in chunks("a4"):
        rig.player.chunk(chunk)
    await until(lambda: rig.final("c4") is not None)
    final = rig.final("c4")
    assert final is not None
    assert final.ok
    assert rig.ducked[-1] is False


async def test_no_chunk_fails_it_with_no_audio() -> None:
    rig = Rig()
    await rig.player.command("c5", args("a5"))
    await until(lambda: rig.final("c5") is not None)
    assert rig.final("c5") == Ack(id="c5", ok=False, code=AckCode.FAILED, detail="no audio")
    assert rig.ducked == []
