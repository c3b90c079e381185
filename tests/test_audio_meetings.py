"""Meetings with real audio: simulated devices join through the control plane, signal
through the meeting server and talk through aiortc; what each hears is checked by FFT.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from brokers import BrokerHandle
from running import controller, operator, register_devices, sim_fleet, wait_for

from fleet.device.audio import AudioMeetingDriver, audio_drivers, tone_for
from fleet.device.sim import SimFleet
from fleet.protocol.messages import ApiOp, ApiRequest, DeviceOutcome

pytestmark = pytest.mark.timeout(120)


def drivers(fleet: SimFleet) -> dict[str, AudioMeetingDriver]:
    return {d.id: d.driver for d in fleet.devices}  # type: ignore[misc]


def heard_pids(driver: AudioMeetingDriver, freqs: dict[str, float]) -> set[str]:
    """The devices whose tone this driver hears (over the last second of each peer)."""
    out = set()
    for participant in driver.heard.peers():
        for pid, freq in freqs.items():
            if driver.hears_tone(participant, freq):
                out.add(pid)
    return out


async def test_three_devices_each_hear_the_other_two_and_not_themselves(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 3)
    ids = list(secrets)
    freqs = {device_id: tone_for(n) for n, device_id in enumerate(ids)}
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db") as ctl,
        sim_fleet(amqtt_broker, secrets, driver_factory=audio_drivers(ids)) as fleet,
        operator(amqtt_broker) as op,
    ):
        result = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=20))
        assert result.ok, result
        assert {d.outcome for d in result.devices} == {DeviceOutcome.CONVERGED}
        by_id = drivers(fleet)
        # Reported state names the session, the device's participant id and both peers.
        states = {d.id: d.meeting for d in fleet.devices}
        sessions = {s.session for s in states.values() if s}
        assert len(sessions) == 1
        await wait_for(
            lambda: all(len(s.peers) == 2 for s in (d.meeting for d in fleet.devices) if s),
            what="every device reports two peers",
        )

        def everyone_hears_the_others() -> bool:
            return all(
                heard_pids(drv, freqs) == set(ids) - {device_id} for device_id, drv in by_id.items()
            )

        await wait_for(everyone_hears_the_others, timeout=20, what="each hears the other two")
        for device_id, drv in by_id.items():
            heard = heard_pids(drv, freqs)
            assert device_id not in heard, f"{device_id} hears itself"
            assert heard == set(ids) - {device_id}

        history = await op.request(ApiOp.SESSIONS, ApiRequest(room="standup"))
        live = history.sessions[0]
        assert live.ended is None
        assert {p.pid for p in live.participants} == set(ids)

        left = await op.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=20))
        assert left.ok, left
        await wait_for(lambda: "standup" not in ctl.parts[0].live, what="session ends")  # type: ignore[attr-defined]
        ended = (await op.request(ApiOp.SESSIONS, ApiRequest(room="standup"))).sessions[0]
        assert ended.ended is not None
        assert all(p.left is not None for p in ended.participants)
        assert all(not drv.mesh.peers() for drv in by_id.values())
