"""fleet-host-device --audio (the C core + media core on GStreamer webrtcbin) meets the Python
simulated devices (aiortc) for real: tones both ways checked by FFT, the mic gate, a
PCMU-only C device with Opus devices, a killed C device leaving its peers, simulated
devices that trickle their ICE candidates (offers and answers) to the C device, and an
announcement played over the meeting, which the C device ducks meanwhile.

WebRTC needs an address besides loopback: the whole test (broker, controller, simulated
devices, host device) runs in a network namespace of its own with one veth pair inside,
entered by this thread (setns) and left afterwards. Needs root and iproute2, the packages
in firmware/host/DEPENDENCIES, and the `build` fixture's host build.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fleet.auth import CredentialStore
from fleet.client import FleetClient
from fleet.controller.service import Controller
from fleet.device.audio import AudioMeetingDriver, AudioProfile, tone_for
from fleet.device.sim import SimFleet
from fleet.media.analysis import hears
from fleet.media.config import MediaConfig
from fleet.protocol.messages import Ack, AckCode, ApiOp, ApiRequest, decode
from tests.support.brokers import BrokerHandle, amqtt_handle, unique_prefix
from tests.support.firmware_announce import WINDOW, amplitude, announce_cmd, chunks, speaker
from tests.support.firmware_announce import tone_frames as announcement_frames
from tests.support.firmware_build import (
    HOST_TONE_HZ,
    IN_CI,
    RATE,
    Build,
    Device,
    build,
    controller_inbox,
    requires_toolchain,
    speaker_tail,
)
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for

__all__ = [
    "build"
]  # the session-scoped fixture (tests/support/firmware_build.py), found here by pytest
pytestmark = [requires_toolchain, pytest.mark.timeout(180)]

CLONE_NEWNET = 0x40000000
HOST_ID = "fw-audio-1"
ROOM = "fw-audio"


# --- a network namespace for this thread -------------------------------------------------------


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def own_network_namespace() -> Iterator[str]:
    """A namespace with lo and one veth end at 10.77.0.1/24, entered by this thread."""
    why = None
    if shutil.which("ip") is None:
        why = "the ip command (iproute2) is not installed"
    elif os.geteuid() != 0:
        why = "network namespaces need root"
    if why is not None:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    name = f"fleet-fwaudio-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", name)
    assert made.returncode == 0, made.stderr
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        for cmd in (
            ("link", "set", "lo", "up"),
            # A veth pair with both ends inside (this kernel may lack the dummy driver).
            ("link", "add", "fw0", "type", "veth", "peer", "name", "fw1"),
            ("addr", "add", "10.77.0.1/24", "dev", "fw0"),
            ("link", "set", "fw0", "up"),
            ("link", "set", "fw1", "up"),
        ):
            done = _ip("-n", name, *cmd)
            assert done.returncode == 0, done.stderr
        ns = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            assert libc.setns(ns, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        finally:
            os.close(ns)
        try:
            yield name
        finally:
            assert libc.setns(home, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(home)
        _ip("netns", "delete", name)


# --- the room ---------------------------------------------------------------------------------


@dataclass
class Room:
    handle: BrokerHandle
    ctl: Controller
    fleet: SimFleet
    op: FleetClient
    host: Device
    speaker: Path

    def sims(self) -> dict[str, AudioMeetingDriver]:
        return {d.id: d.driver for d in self.fleet.devices}  # type: ignore[misc]

    def host_participant(self) -> str | None:
        """The host device's participant id, as the simulated devices know it."""
        for drv in self.sims().values():
            for participant, pid in drv.peer_pids().items():
                if pid == HOST_ID:
                    return participant
        return None


@contextlib.asynccontextmanager
async def room_with_host(
    tmp_path: Path,
    build: Build,
    codecs: str,
    sim_codecs: tuple[str, ...] = ("opus", "pcmu"),
    host_first: bool = False,
    sims_trickle: bool = False,
    host_args: tuple[str, ...] = (),
) -> AsyncIterator[Room]:
    """A controller, two simulated devices with tones (400, 575 Hz) and the host device with
    its tone, all joined to ROOM. The newcomer offers (protocol.md 8.1): the host device
    offers when it joins last, and answers both when it joins first."""
    handle = amqtt_handle(CredentialStore(tmp_path / "home" / "credentials.json"), unique_prefix())
    await handle.start()
    try:
        secrets = register_devices(handle, 2)
        host_secret = handle.add_device(HOST_ID)
        speaker = tmp_path / "speaker.wav"
        args = [
            "--broker",
            handle.url(HOST_ID, host_secret),
            "--id",
            HOST_ID,
            "--prefix",
            handle.prefix,
            "--tele-interval",
            "1",
            "--audio",
            "--codecs",
            codecs,
            "--tone",
            str(HOST_TONE_HZ),
            "--speaker-wav",
            str(speaker),
            *host_args,
        ]
        host = Device(build.device_asan, args, tmp_path / "host-device.log")
        ids = list(secrets)

        def driver(device_id: str) -> AudioMeetingDriver:
            media = MediaConfig(codecs=sim_codecs, trickle=sims_trickle)  # type: ignore[arg-type]
            return AudioMeetingDriver(
                AudioProfile(media=media, tone_hz=tone_for(ids.index(device_id)))
            )

        async with (
            controller(handle, tmp_path / "ctl.db") as ctl,
            sim_fleet(handle, secrets, driver_factory=driver) as fleet,
            operator(handle) as op,
        ):
            await host.start()
            try:
                await wait_for(
                    lambda: (r := ctl.registry.devices.get(HOST_ID)) is not None and r.online,
                    what="the host device's birth",
                )
                # Who joins first is fixed, not left to a join-all's race: the newcomer offers.
                firsts = [HOST_ID] if host_first else ids
                for device_id in firsts:
                    first = await op.request(
                        ApiOp.JOIN, ApiRequest(room=ROOM, device=device_id, timeout_s=30)
                    )
                    assert first.ok, first
                if host_first:  # its core reports the rev while joining: wait for joined
                    await wait_for(lambda: "meeting: joined room" in host.text(), what="joined")
                result = await op.request(ApiOp.JOIN_ALL, ApiRequest(room=ROOM, timeout_s=30))
                assert result.ok, result
                yield Room(handle, ctl, fleet, op, host, speaker)  # type: ignore[arg-type]
            except BaseException:
                print(f"host device log (tail):\n{host.text()[-6000:]}")
                raise
            finally:
                await host.stop()
                log = host.text()
                assert "Sanitizer" not in log, log[-4000:]
                assert "runtime error" not in log, log[-4000:]
    finally:
        await handle.stop()


@pytest.fixture
def netns() -> Iterator[str]:
    with own_network_namespace() as name:
        yield name


def _host_hears_both(room: Room) -> bool:
    """The host device's speaker played both simulated devices' tones in its last second."""
    tail = speaker_tail(room.speaker)
    return len(tail) == RATE and all(hears(tail, tone_for(n)) for n in range(2))


def _hears_host(room: Room, last_s: float = 1.0) -> dict[str, bool]:
    participant = room.host_participant()
    return {
        sim_id: participant is not None and drv.hears_tone(participant, HOST_TONE_HZ, last_s)
        for sim_id, drv in room.sims().items()
    }


async def test_host_device_and_simulated_devices_hear_each_other(
    netns: str, build: Build, tmp_path: Path
) -> None:
    async with room_with_host(tmp_path, build, "opus,pcmu,pcma") as room:
        # Each simulated device hears the C device's tone ...
        await wait_for(
            lambda: all(_hears_host(room).values()), timeout=30, what="both sims hear the host"
        )

        # ... and the C device's speaker plays both of theirs (the mix), not its own.
        await wait_for(
            lambda: _host_hears_both(room), timeout=20, what="the host's speaker plays both tones"
        )
        assert not hears(speaker_tail(room.speaker), HOST_TONE_HZ)
        log = room.host.text()
        # The host device joined last (room_with_host fixes the order): it offered.
        assert log.count("opus (payload type 111)") == 2, log[-3000:]
        assert log.count("offer to") == 2, log[-3000:]
        assert "answer from" in log

        # mic: false gates the C device's microphone: its peers hear silence, yet its
        # stream keeps coming (the RTP clock runs on: packets still arrive).
        first = next(iter(room.sims().values()))
        participant = room.host_participant()
        assert participant is not None
        ok = await room.op.request(
            ApiOp.JOIN, ApiRequest(room=ROOM, device=HOST_ID, mic=False, timeout_s=20)
        )
        assert ok.ok, ok
        await wait_for(
            lambda: not any(_hears_host(room).values()), timeout=20, what="the host muted"
        )
        assert "mic off" in room.host.text()
        muted_at = first.heard.received_samples(participant)
        await wait_for(
            lambda: first.heard.received_samples(participant) > muted_at + RATE,
            what="a second more of the muted host's stream",
        )
        assert first.levels.level(participant) < 0.01

        # Killing the C device (no goodbye: the broker's will) removes it from its peers.
        assert await room.host.signal(signal.SIGKILL) == -signal.SIGKILL
        await wait_for(
            lambda: all(
                participant not in (d.meeting.peers if d.meeting else [])
                for d in room.fleet.devices
            ),
            timeout=20,
            what="the sims drop the killed host device",
        )
        await wait_for(
            lambda: all(participant not in d.driver.mesh.peers() for d in room.fleet.devices),  # type: ignore[attr-defined]
            what="and close their connections to it",
        )


@pytest.mark.parametrize(
    ("codecs", "negotiated"),
    [("pcmu", "pcmu (payload type 0)"), ("opus,pcmu,pcma", "opus (payload type 96)")],
    ids=["pcmu-only", "opus"],
)
async def test_a_host_device_that_answers_talks_with_opus_devices(
    netns: str, build: Build, tmp_path: Path, codecs: str, negotiated: str
) -> None:
    # The host device joins first here: both simulated devices offer, it answers, with the
    # offer's payload types (aiortc's Opus is 96, ours when we offer 111).
    async with room_with_host(tmp_path, build, codecs, ("opus", "pcmu"), host_first=True) as room:
        await wait_for(
            lambda: all(_hears_host(room).values()), timeout=30, what="both sims hear the host"
        )
        await wait_for(
            lambda: _host_hears_both(room), timeout=20, what="the host's speaker plays both tones"
        )
        log = room.host.text()
        assert log.count(negotiated) == 2, log[-3000:]
        assert "stream error" not in log, log[-3000:]
        if codecs == "pcmu":
            assert "opus (payload type" not in log
        assert "offer from" in log
        assert "answer to" in log
        assert "offer to" not in log


def _speaker_bytes(room: Room) -> int:
    return room.speaker.stat().st_size if room.speaker.exists() else 0


async def test_a_host_device_meets_participants_that_trickle(
    netns: str, build: Build, tmp_path: Path
) -> None:
    """Every side trickles (docs/protocol.md §8.6: the SDP without candidates, each candidate
    and then the end of them as messages): the simulated devices first as offers to the C
    device (it joined first), then, after it rejoins and offers, as answers; the C device
    (--trickle) its answers, then its offers. Its core hands what it gets to webrtcbin after
    the SDP; both ways the tones get through."""
    async with room_with_host(
        tmp_path, build, "opus", host_first=True, sims_trickle=True, host_args=("--trickle",)
    ) as room:

        def host_hears_both_since(mark: int) -> bool:
            # Two seconds after mark, so the last one is all from after it.
            return _speaker_bytes(room) - mark >= 2 * 2 * RATE and _host_hears_both(room)

        def taken(what: str) -> int:
            return sum(1 for line in room.host.text().splitlines() if what in line)

        await wait_for(lambda: all(_hears_host(room).values()), timeout=30, what="sims hear host")
        await wait_for(lambda: host_hears_both_since(0), timeout=20, what="host hears both")
        log = room.host.text()
        assert taken("offer from") == 2, log[-3000:]
        assert taken(") taken: candidate:") >= 2, log[-3000:]
        assert taken(") taken: end of candidates") == 2, log[-3000:]
        assert taken("candidate to p-") >= 4, log[-3000:]  # ours: at least one and the end
        assert taken("sent: end of candidates") == 2, log[-3000:]
        assert not [line for line in log.splitlines() if "candidate" in line and "ignored" in line]

        # The C device rejoins: now it offers, and the answers trickle.
        before = room.host_participant()
        left = await room.op.request(ApiOp.LEAVE, ApiRequest(device=HOST_ID, timeout_s=20))
        assert left.ok, left
        mark = _speaker_bytes(room)
        joined = await room.op.request(
            ApiOp.JOIN, ApiRequest(room=ROOM, device=HOST_ID, timeout_s=20)
        )
        assert joined.ok, joined
        await wait_for(
            lambda: (p := room.host_participant()) is not None and p != before,
            what="the sims know the rejoined host",
        )
        await wait_for(lambda: all(_hears_host(room).values()), timeout=30, what="sims hear it")
        await wait_for(lambda: host_hears_both_since(mark), timeout=20, what="it hears both")
        log = room.host.text()
        assert taken("answer from") == 2, log[-3000:]
        assert taken(") taken: end of candidates") == 4, log[-3000:]
        assert taken("sent: end of candidates") == 4, log[-3000:]
        assert not [line for line in log.splitlines() if "candidate" in line and "ignored" in line]


# --- an announcement over the meeting ------------------------------------------------------------

ANN_HZ = 1000.0


async def test_an_announcement_plays_over_the_meeting_ducked(
    netns: str, build: Build, tmp_path: Path
) -> None:
    """The controller's announce command and Opus chunks (1 s at once, then paced) reach the C
    device in a meeting: it plays the clip at full level over the meeting, whose audio it
    ducks to a quarter meanwhile and brings back after the last frame, and it stays in the
    meeting (both ways)."""
    async with room_with_host(tmp_path, build, "opus") as room:
        await wait_for(
            lambda: _host_hears_both(room), timeout=30, what="the host's speaker plays both tones"
        )
        mark = speaker(room.speaker).size  # a second and a half of the meeting, undisturbed
        await wait_for(
            lambda: speaker(room.speaker).size > mark + 3 * RATE // 2, what="more of the meeting"
        )
        t = room.handle.topics
        frames = announcement_frames("opus", ANN_HZ, 2.0)
        payloads = chunks("ann-duck", "opus", frames)
        ann_topic = f"{t.prefix}/dev/{HOST_ID}/ann"
        async with controller_inbox(room.handle, [t.ack(HOST_ID)]) as inbox:

            def ack_of(done: bool) -> Callable[[bytes], bool]:
                return lambda p: (a := decode(Ack, p)).id == "d1" and a.done == done

            ctl = inbox.client
            await ctl.publish(t.cmd(HOST_ID), announce_cmd("d1", "ann-duck", 2000), qos=1)
            for payload in payloads[:5]:  # the first second at once
                await ctl.publish(ann_topic, payload, qos=1)
            accepted = decode(Ack, await inbox.wait(t.ack(HOST_ID), ack_of(False)))
            assert accepted.code is AckCode.ACCEPTED
            await asyncio.sleep(0.8)  # pacing, as the controller does: about 1 s ahead
            for payload in payloads[5:]:
                await ctl.publish(ann_topic, payload, qos=1)
            final = decode(Ack, await inbox.wait(t.ack(HOST_ID), ack_of(True)))
        assert final.code is AckCode.OK, final
        assert final.result == {"played_ms": 2000}
        end = speaker(room.speaker).size
        await wait_for(
            lambda: speaker(room.speaker).size > end + RATE, what="a second more of the speaker"
        )
        heard = speaker(room.speaker)

        def meeting_level(x: np.ndarray) -> float:
            return sum(amplitude(x, tone_for(n)) for n in range(2))

        wins = [heard[i : i + WINDOW] for i in range(0, heard.size - WINDOW, WINDOW)]
        playing = [i for i, w in enumerate(wins) if amplitude(w, ANN_HZ) > 0.2]
        assert 17 <= len(playing) <= 21, len(playing)  # 2 s of 100 ms windows
        first, last = playing[0], playing[-1]
        before = float(np.median([meeting_level(w) for w in wins[first - 10 : first - 1]]))
        during = float(np.median([meeting_level(w) for w in wins[first + 2 : last - 1]]))
        after = float(np.median([meeting_level(w) for w in wins[last + 4 : last + 10]]))
        assert before > 0.05, before
        assert 0.15 * before < during < 0.35 * before, (before, during)
        assert after > 0.7 * before, (before, after)
        # Still in the meeting: the sims hear it, it hears them.
        await wait_for(lambda: all(_hears_host(room).values()), what="both sims still hear it")
        assert "announcement ann-duck played: 2000 ms" in room.host.text()
