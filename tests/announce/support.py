"""What the announcement tests share: a controller with the meeting server and the
announcements part, and what a simulated device heard of announcements."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np

from fleet.agents.voice.audio import STT_RATE, resample
from fleet.agents.voice.stt import PocketSphinxSTT
from fleet.announce import AnnouncePart
from fleet.controller.service import Controller
from fleet.device.announce import ANNOUNCE_STREAM
from fleet.device.sim import SimulatedDevice
from fleet.media.frames import SAMPLE_RATE
from fleet.media.sinks import CaptureSink
from fleet.meetings import MeetingServer
from tests.support.brokers import BrokerHandle
from tests.support.running import controller

# The chime (2 x (120 + 20) ms) before the speech: left out of what is recognized.
CHIME_S = 0.3


@contextlib.asynccontextmanager
async def announcing_controller(
    handle: BrokerHandle, db: Path, mixers: Sequence[str] = ()
) -> AsyncIterator[Controller]:
    server = MeetingServer(auto_create=True, mixers=list(mixers))
    async with controller(handle, db, parts=[server, AnnouncePart(rooms=server)]) as ctl:
        yield ctl


def heard(dev: SimulatedDevice) -> np.ndarray:
    """Every announcement sample the device played (48 kHz mono int16)."""
    speaker = dev.driver.speaker()
    if isinstance(speaker, CaptureSink):
        return speaker.samples(ANNOUNCE_STREAM)
    sinks = getattr(speaker, "sinks", ())
    for sink in sinks:
        if isinstance(sink, CaptureSink):
            return sink.samples(ANNOUNCE_STREAM)
    return np.zeros(0, dtype=np.int16)


async def recognize(
    stt: PocketSphinxSTT, samples: np.ndarray, phrases: Sequence[str], skip_s: float = CHIME_S
) -> str:
    speech = samples[round(skip_s * SAMPLE_RATE) :]
    return (await stt.transcribe(resample(speech, SAMPLE_RATE, STT_RATE), phrases)).text
