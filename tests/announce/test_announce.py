"""Announcements end to end on both brokers: the controller renders with espeak-ng, sends
over MQTT, and each simulated device plays what it got; what a device played is
recognized with pocketsphinx (a small grammar of the phrases used here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from fleet.agents.voice.stt import PocketSphinxSTT
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    DeviceOutcome,
    Priority,
)
from tests.announce.support import announcing_controller, heard, recognize
from tests.support.brokers import BrokerHandle
from tests.support.running import one_device, operator, register_devices, sim_fleet, wait_for

pytestmark = pytest.mark.timeout(120)

PHRASES = ["lunch is ready", "the door is open", "please go home", "stop the music"]


def outcomes(result: ApiResult) -> dict[str, DeviceOutcome]:
    return {d.device: d.outcome for d in result.devices}


async def test_a_group_hears_the_announcement_and_no_other_device_does(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    kitchen = register_devices(any_broker, 2, groups=["kitchen"], prefix="kit")
    hall = register_devices(any_broker, 2, prefix="hall")
    gone = register_devices(any_broker, 1, groups=["kitchen"], prefix="gone")
    stt = PocketSphinxSTT(reject_below=-1e9)
    async with (
        announcing_controller(any_broker, tmp_path / "ctl.db"),
        operator(any_broker) as op,
    ):
        # gone-1, of the kitchen, announces itself and goes away: offline.
        async with one_device(any_broker, "gone-1", gone["gone-1"], groups=["kitchen"]):
            pass
        async with (
            sim_fleet(any_broker, kitchen, groups=["kitchen"]) as kit,
            sim_fleet(any_broker, hall) as others,
        ):
            await wait_for(lambda: len(op.registry.devices) == 5, what="five devices known")
            result = await op.request(
                ApiOp.ANNOUNCE, ApiRequest(text="lunch is ready", group="kitchen", timeout_s=60)
            )
            assert result.ok, result
            assert result.ann
            assert outcomes(result) == {
                "kit-1": DeviceOutcome.PLAYED,
                "kit-2": DeviceOutcome.PLAYED,
                "gone-1": DeviceOutcome.OFFLINE,
            }
            played = {d.device: (d.result or {}).get("played_ms") for d in result.devices}
            assert all(ms and ms > 1000 for d, ms in played.items() if d != "gone-1"), played
            for dev in kit.devices:
                assert await recognize(stt, heard(dev), PHRASES) == "lunch is ready", dev.id
            for dev in others.devices:
                assert heard(dev).size == 0, dev.id
                assert dev._announcer is None, dev.id
            # Every device, no target named: the hall too.
            result = await op.request(
                ApiOp.ANNOUNCE,
                ApiRequest(text="the door is open", chime=False, timeout_s=60),
            )
            assert result.ok, result
            assert sum(o is DeviceOutcome.PLAYED for o in outcomes(result).values()) == 4
            for dev in others.devices:
                assert await recognize(stt, heard(dev), PHRASES, 0) == "the door is open"


async def test_do_not_disturb_skips_a_normal_announcement_not_an_urgent_one(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 2)
    async with (
        announcing_controller(any_broker, tmp_path / "ctl.db"),
        operator(any_broker) as op,
        sim_fleet(any_broker, secrets) as fleet,
    ):
        dev1 = fleet["dev-1"]
        result = await op.request(ApiOp.DND, ApiRequest(device="dev-1", on=True))
        assert result.ok, result
        assert dev1.dnd
        await wait_for(lambda: bool(op.registry.devices["dev-1"].state.dnd), what="dnd reported")
        # A join keeps it: the device's own doc still says dnd.
        assert (await op.request(ApiOp.JOIN, ApiRequest(device="dev-1", room="standup"))).ok
        assert dev1.dnd
        assert dev1.meeting is not None
        # dnd on and off again keeps the device in its meeting.
        result = await op.request(ApiOp.ANNOUNCE, ApiRequest(text="please go home", timeout_s=60))
        assert result.ok, result
        assert outcomes(result) == {"dev-1": DeviceOutcome.SKIPPED, "dev-2": DeviceOutcome.PLAYED}
        assert heard(dev1).size == 0
        result = await op.request(
            ApiOp.ANNOUNCE,
            ApiRequest(text="stop the music", priority=Priority.URGENT, timeout_s=60),
        )
        assert outcomes(result) == {"dev-1": DeviceOutcome.PLAYED, "dev-2": DeviceOutcome.PLAYED}
        assert heard(dev1).size > 0
        assert (await op.request(ApiOp.DND, ApiRequest(device="dev-1", on=False))).ok
        assert not dev1.dnd
        assert dev1.meeting is not None
        assert dev1.meeting.room == "standup"


async def test_urgent_interrupts_a_normal_one_and_normal_ones_queue(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 1)
    long_text = "please go home " * 4
    async with (
        announcing_controller(any_broker, tmp_path / "ctl.db"),
        operator(any_broker) as op,
        sim_fleet(any_broker, secrets) as fleet,
    ):
        dev = fleet["dev-1"]

        def ask(text: str, priority: Priority) -> asyncio.Task[ApiResult]:
            request = ApiRequest(device="dev-1", text=text, priority=priority, timeout_s=60)
            return asyncio.create_task(op.request(ApiOp.ANNOUNCE, request))

        first = ask(long_text, Priority.NORMAL)
        await wait_for(
            lambda: (
                dev._announcer is not None
                and dev.announcer.current is not None
                and dev.announcer.current.first_audio_at is not None
            ),
            what="the first one playing",
        )
        playing = dev.announcer.current
        assert playing is not None
        queued = ask("lunch is ready", Priority.NORMAL)
        await asyncio.sleep(0.3)  # the second one in the queue before the urgent one
        assert dev.announcer.current is playing, "a normal one waits behind the one playing"
        urgent = ask("stop the music", Priority.URGENT)
        results = await asyncio.gather(first, queued, urgent)
        cut, later, loud = results
        assert not cut.ok
        assert cut.devices[0].outcome is DeviceOutcome.FAILED
        assert cut.devices[0].detail == f"interrupted by {loud.ann}"
        assert later.ok, later
        assert later.devices[0].outcome is DeviceOutcome.PLAYED, later
        assert loud.ok, loud
        assert loud.devices[0].outcome is DeviceOutcome.PLAYED, loud
        # On the device: the first cut off by the urgent one, the queued one after it.
        first_play = dev.announcer.by_ann(cut.ann or "")
        loud_play = dev.announcer.by_ann(loud.ann or "")
        later_play = dev.announcer.by_ann(later.ann or "")
        assert first_play
        assert loud_play
        assert later_play
        assert first_play.outcome == f"failed: interrupted by {loud.ann}"
        assert loud_play.outcome == "played"
        assert later_play.outcome == "played"
        assert loud_play.first_audio_at is not None
        assert later_play.first_audio_at is not None
        assert loud_play.first_audio_at < later_play.first_audio_at


async def test_bad_announcements_get_clear_errors(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    import base64

    from fleet.protocol.messages import MAX_SOUND_BYTES
    from fleet.speech.audio import wav_bytes

    wav = base64.b64encode(wav_bytes(np.full(1600, 0x1000, dtype="<i2"), 16000)).decode()
    secrets = register_devices(amqtt_broker, 1)
    async with (
        announcing_controller(amqtt_broker, tmp_path / "ctl.db"),
        operator(amqtt_broker) as op,
        sim_fleet(amqtt_broker, secrets),
    ):
        cases = [
            (ApiRequest(text="hi", sound_b64=wav), "bad_request", "text or sound_b64, not both"),
            (ApiRequest(), "bad_request", "text or sound_b64"),
            (ApiRequest(text="  "), "bad_request", "the text is empty"),
            (ApiRequest(text="a" * 1001), "bad_request", "at most 1000"),
            (
                ApiRequest(sound_b64=base64.b64encode(b"\x00" * (MAX_SOUND_BYTES + 1)).decode()),
                "bad_request",
                f"at most {MAX_SOUND_BYTES}",
            ),
            (ApiRequest(sound_b64="not base64!"), "bad_request", "not base64"),
            (
                ApiRequest(sound_b64=base64.b64encode(b"ID3 an mp3").decode()),
                "bad_request",
                "not a WAV file",
            ),
            (ApiRequest(text="hi", device="dev-9"), "unknown_device", "unknown device 'dev-9'"),
            (ApiRequest(text="hi", device="dev-1", group="kitchen"), "bad_request", "name one"),
            (ApiRequest(text="hi", room="nowhere"), "unknown_room", "no room named 'nowhere'"),
        ]
        for request, code, detail in cases:
            result = await op.request(ApiOp.ANNOUNCE, request)
            assert not result.ok, request
            assert result.done
            assert result.code == code, result
            assert detail in result.detail, result
        # A sound file plays, here without the chime.
        result = await op.request(
            ApiOp.ANNOUNCE, ApiRequest(sound_b64=wav, chime=False, device="dev-1")
        )
        assert result.ok, result
        assert result.devices[0].outcome is DeviceOutcome.PLAYED
        # An unknown device for dnd.
        result = await op.request(ApiOp.DND, ApiRequest(device="dev-9", on=True))
        assert result.code == "unknown_device", result


async def test_the_bulk_engine_plays_announcements_too(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 3)
    stt = PocketSphinxSTT(reject_below=-1e9)
    async with (
        announcing_controller(amqtt_broker, tmp_path / "ctl.db"),
        operator(amqtt_broker) as op,
        sim_fleet(amqtt_broker, secrets, engine="bulk") as fleet,
    ):
        await wait_for(lambda: len(op.registry.devices) == 3, what="three devices known")
        result = await op.request(ApiOp.ANNOUNCE, ApiRequest(text="stop the music", timeout_s=60))
        assert result.ok, result
        assert result.counts == {"played": 3}
        for dev in fleet.devices:
            assert await recognize(stt, heard(dev), PHRASES) == "stop the music", dev.id
