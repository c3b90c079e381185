"""The firmware's side of announcements and calls (protocol.md 14) in fleet-host-device (the
real C core and media core, ASan+UBSan build) against a real broker: the test publishes what
the controller would (the `announce` command, Opus and PCMU chunks on dev/{id}/ann, `ring`,
desired docs with `dnd`) and checks the acks, the state, what the device's speaker played
(its --speaker-wav) and the requests its button (SIGUSR1) publishes on api/by/{id}/{op}.

No meeting here, so no network namespace: --audio runs the speaker whether or not the device
meets. Ducking under a live meeting is in test_host_audio.py.
"""

from __future__ import annotations

import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.protocol.messages import Ack, AckCode, decode
from tests.support.brokers import BrokerHandle
from tests.support.firmware_announce import (
    WINDOW,
    amplitude,
    announce_cmd,
    chunks,
    speaker,
    tone_frames,
    windows_with,
)
from tests.support.firmware_build import (
    RATE,
    Build,
    Device,
    Inbox,
    build,
    controller_inbox,
    requires_toolchain,
)
from tests.support.running import wait_for

__all__ = ["build"]  # the session-scoped fixture (tests/support/firmware_build.py)
pytestmark = [requires_toolchain, pytest.mark.timeout(120)]

# --- the device --------------------------------------------------------------------------------


def device_secret(handle: BrokerHandle, dev: str) -> str:
    """The host device's own device credential: the ACL lets it read its dev/{id}/ann and
    publish its button's api/by/{id}/call|answer|hangup, and nothing of another's."""
    return handle.add_device(dev)


@dataclass
class Host:
    handle: BrokerHandle
    dev: str
    device: Device
    inbox: Inbox
    wav: Path

    async def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        await self.inbox.client.publish(topic, payload, qos=1, retain=retain)

    async def command(self, payload: bytes) -> None:
        await self.send(self.handle.topics.cmd(self.dev), payload)

    async def chunk(self, payload: bytes) -> None:
        await self.send(f"{self.handle.topics.prefix}/dev/{self.dev}/ann", payload)

    async def ack(self, cmd_id: str, done: bool, start: int = 0) -> Ack:
        raw = await self.inbox.wait(
            self.handle.topics.ack(self.dev),
            lambda p: (a := decode(Ack, p)).id == cmd_id and a.done == done,
            start=start,
        )
        return decode(Ack, raw)

    def press(self) -> None:
        assert self.device.proc is not None
        self.device.proc.send_signal(signal.SIGUSR1)

    async def speaker_after(self, seconds: float) -> np.ndarray:
        """The whole speaker recording, once it holds `seconds` more than now."""
        want = speaker(self.wav).size + int(seconds * RATE)
        await wait_for(lambda: speaker(self.wav).size >= want, 15.0, "the speaker WAV to grow")
        return speaker(self.wav)


@contextlib.asynccontextmanager
async def host_device(
    handle: BrokerHandle, build: Build, tmp_path: Path, *extra: str
) -> AsyncIterator[Host]:
    dev = f"fw-ic-{uuid.uuid4().hex[:6]}"
    t = handle.topics
    secret = device_secret(handle, dev)
    wav = tmp_path / "speaker.wav"
    args = [
        "--broker",
        handle.url(dev, secret),
        "--id",
        dev,
        "--prefix",
        handle.prefix,
        "--tele-interval",
        "0",
        "--audio",
        "--codecs",
        "opus,pcmu",
        "--speaker-wav",
        str(wav),
        *extra,
    ]
    device = Device(build.device_asan, args, tmp_path / "device.log")
    topics = [t.status(dev), t.state(dev), t.ack(dev)] + [
        t.api_by(dev, op) for op in ("call", "answer", "hangup")
    ]
    async with controller_inbox(handle, topics) as inbox:
        try:
            await device.start()
            await inbox.wait(t.state(dev))  # connected and subscribed
            await wait_for(lambda: "subscribe " + f"{t.prefix}/dev/{dev}/ann" in device.text())
            yield Host(handle, dev, device, inbox, wav)
            assert device.alive, device.text()[-3000:]
        finally:
            await device.stop()
    log = device.text()
    assert "Sanitizer" not in log, log[-3000:]
    assert "runtime error" not in log, log[-3000:]


# --- the tests ---------------------------------------------------------------------------------


async def test_announcement_plays_and_is_acknowledged(
    any_broker: BrokerHandle, build: Build, tmp_path: Path
) -> None:
    """Opus chunks as the controller sends them (the first second at once): accepted when it
    starts, ok with played_ms when the last frame has played, and the speaker played the tone
    at its level for as long; then a PCMU one."""
    async with host_device(any_broker, build, tmp_path) as h:
        frames = tone_frames("opus", 880.0, 1.0)
        await h.command(announce_cmd("a1", "ann-1", 1000))
        for payload in chunks("ann-1", "opus", frames):
            await h.chunk(payload)
        accepted = await h.ack("a1", done=False)
        assert accepted.code is AckCode.ACCEPTED
        assert accepted.ok
        final = await h.ack("a1", done=True)
        assert final.code is AckCode.OK, final
        assert final.result == {"played_ms": 1000}

        pcmu = tone_frames("pcmu", 660.0, 0.6)
        assert {len(f) for f in pcmu} == {160}
        await h.command(announce_cmd("a2", "ann-2", 600))
        for payload in chunks("ann-2", "pcmu", pcmu):
            await h.chunk(payload)
        final = await h.ack("a2", done=True)
        assert final.code is AckCode.OK, final
        assert final.result == {"played_ms": 600}

        heard = await h.speaker_after(0.6)
        # 100 ms windows: the 880 Hz clip for about a second, the 660 Hz one for 0.6 s, each at
        # the level it was sent with (0.3), never both at once.
        assert 8 <= windows_with(heard, 880.0, 0.2) <= 11
        assert 5 <= windows_with(heard, 660.0, 0.2) <= 7
        loudest = max(
            amplitude(heard[i : i + WINDOW], 880.0) for i in range(0, heard.size - WINDOW, WINDOW)
        )
        assert 0.25 < loudest < 0.35
        assert "announcement ann-1 played: 1000 ms" in h.device.text()


async def test_announcement_failures_and_bad_chunks(
    amqtt_broker: BrokerHandle, build: Build, tmp_path: Path
) -> None:
    """No chunk within 2 s: failed "no audio". Malformed chunks are refused and logged and
    the device keeps working (a ping, then an announcement). An urgent announcement cuts a
    normal one off: failed "interrupted by <ann>"."""
    async with host_device(amqtt_broker, build, tmp_path) as h:
        await h.command(announce_cmd("q1", "quiet", 1000))
        failed = await h.ack("q1", done=True)
        assert failed.code is AckCode.FAILED
        assert failed.detail == "no audio"

        await h.command(announce_cmd("b1", "bad", 400))
        for payload in (
            b"not json",
            b"[]",
            b'{"ann":"bad","seq":0,"codec":"mp3","frames":["AAAA"]}',
            b'{"ann":"bad","seq":0,"codec":"opus","frames":["A!AA"]}',
            b'{"ann":"bad","seq":0,"codec":"opus","frames":[]}',
            b'{"ann":"bad","seq":0,"codec":"pcmu","frames":["AAAA"]}',
            b'{"ann":"bad","seq":-1,"codec":"opus","frames":["AAAA"]}',
            b'{"ann":"b a d","seq":0,"codec":"opus","frames":["AAAA"]}',
            b'{"ann":"bad","seq":0,"codec":"opus","frames":["' + b"A" * 66_000 + b'"]}',
        ):
            await h.chunk(payload)
        await h.command(json.dumps({"id": "p1", "op": "ping"}).encode())
        assert (await h.ack("p1", done=True)).code is AckCode.OK
        failed = await h.ack("b1", done=True)
        assert failed.detail == "no audio"  # none of them counted as audio
        assert h.device.text().count("announcement chunk refused") >= 7

        long = tone_frames("opus", 880.0, 3.0)
        mark = len(h.inbox.messages)
        await h.command(announce_cmd("n1", "long", 3000))
        for payload in chunks("long", "opus", long)[:5]:
            await h.chunk(payload)
        await h.ack("n1", done=False, start=mark)
        urgent = tone_frames("opus", 1300.0, 0.4)
        await h.command(announce_cmd("u1", "fire", 400, priority="urgent"))
        for payload in chunks("fire", "opus", urgent, priority="urgent"):
            await h.chunk(payload)
        cut = await h.ack("n1", done=True, start=mark)
        assert cut.code is AckCode.FAILED
        assert cut.detail == "interrupted by fire"
        final = await h.ack("u1", done=True, start=mark)
        assert final.code is AckCode.OK
        assert final.result == {"played_ms": 400}


async def test_ring_and_its_end(amqtt_broker: BrokerHandle, build: Build, tmp_path: Path) -> None:
    """`ring` acks ok at once and the speaker rings (440 + 480 Hz); the ring stops when the
    device's desired meeting changes, and with seconds 0."""
    async with host_device(amqtt_broker, build, tmp_path) as h:
        t = h.handle.topics
        ring = {"id": "r1", "op": "ring", "args": {"call": "call-abc", "seconds": 30}}
        await h.command(json.dumps(ring).encode())
        ack = await h.ack("r1", done=True)
        assert ack.code is AckCode.OK
        heard = await h.speaker_after(1.5)
        tail = heard[-RATE:]
        assert amplitude(tail, 440.0) > 0.1
        assert amplitude(tail, 480.0) > 0.1

        # The call's room becomes the desired meeting: the ring stops.
        await h.send(t.desired(h.dev), b'{"rev":3,"meeting":{"room":"call-abc"}}', retain=True)
        await wait_for(lambda: "ring stops" in h.device.text(), what="the ring to stop")
        quiet = (await h.speaker_after(0.6))[-int(0.4 * RATE) :]
        assert amplitude(quiet, 440.0) < 0.01

        # Again, then seconds 0 stops it; a bad one is refused.
        await h.command(json.dumps({**ring, "id": "r2"}).encode())
        await h.ack("r2", done=True)
        await h.command(json.dumps({"id": "r3", "op": "ring", "args": {"seconds": 0}}).encode())
        assert (await h.ack("r3", done=True)).code is AckCode.OK
        bad = {"id": "r4", "op": "ring", "args": {"seconds": 500}}
        await h.command(json.dumps(bad).encode())
        assert (await h.ack("r4", done=True)).code is AckCode.BAD_ARGS
        assert h.device.text().count("ring off") >= 2


async def test_dnd_comes_from_the_own_desired_doc(
    any_broker: BrokerHandle, build: Build, tmp_path: Path
) -> None:
    """The state reports dnd from the device's own desired doc, also when a group doc's
    higher rev wins the meeting; a group doc's dnd is ignored."""
    async with host_device(any_broker, build, tmp_path) as h:
        t = h.handle.topics

        def state_with(rev: int, dnd: bool) -> Any:
            return lambda p: json.loads(p)["rev"] == rev and json.loads(p).get("dnd", False) is dnd

        await h.send(t.desired(h.dev), b'{"rev":2,"dnd":true}', retain=True)
        await h.inbox.wait(t.state(h.dev), state_with(2, True))
        await h.send(t.group_desired("all"), b'{"rev":5,"meeting":null,"dnd":false}', retain=True)
        await h.inbox.wait(t.state(h.dev), state_with(5, True))
        await h.send(t.desired(h.dev), b'{"rev":6,"dnd":false}', retain=True)
        st = json.loads(await h.inbox.wait(t.state(h.dev), state_with(6, False)))
        assert "dnd" not in st  # false is the default: left out
        await h.send(t.group_desired("all"), b"", retain=True)


async def test_button_publishes_call_answer_hangup(
    amqtt_broker: BrokerHandle, build: Build, tmp_path: Path
) -> None:
    """A short press calls --call-to (call_to in NVS); while ringing it answers; in a call
    room it hangs up: ApiRequests on api/by/{id}/{op}."""
    async with host_device(amqtt_broker, build, tmp_path, "--call-to", "fw-callee") as h:
        t = h.handle.topics
        h.press()
        call = json.loads(await h.inbox.wait(t.api_by(h.dev, "call")))
        assert call["device"] == h.dev
        assert call["to"] == "fw-callee"
        assert call["id"].startswith("btn-")

        await h.command(b'{"id":"r1","op":"ring","args":{"call":"call-1","seconds":30}}')
        await h.ack("r1", done=True)
        h.press()
        answer = json.loads(await h.inbox.wait(t.api_by(h.dev, "answer")))
        assert answer == {"id": answer["id"], "device": h.dev}
        assert answer["id"] != call["id"]

        await h.send(t.desired(h.dev), b'{"rev":4,"meeting":{"room":"call-1"}}', retain=True)
        await h.inbox.wait(t.state(h.dev), lambda p: "call-1" in p.decode())
        h.press()
        hangup = json.loads(await h.inbox.wait(t.api_by(h.dev, "hangup")))
        assert hangup["device"] == h.dev
        await h.send(t.desired(h.dev), b"", retain=True)


async def test_button_without_a_target_does_nothing(
    amqtt_broker: BrokerHandle, build: Build, tmp_path: Path
) -> None:
    async with host_device(amqtt_broker, build, tmp_path) as h:
        h.press()
        await wait_for(lambda: "no call target configured" in h.device.text())
        # A request would have left before the ping's ack (one connection, in order).
        await h.command(b'{"id":"p1","op":"ping"}')
        await h.ack("p1", done=True)
        assert not h.inbox.on(h.handle.topics.api_by(h.dev, "call"))
