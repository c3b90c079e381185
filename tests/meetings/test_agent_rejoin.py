"""An agent outlives a broker restart (it reconnects and joins its room
again), and says what it does: joining, its peers, leaving."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fleet.agents import EchoAgent
from fleet.agents.runner import agent_in_room
from fleet.auth import Role
from fleet.device.audio import audio_drivers, tone_for
from fleet.media.sinks import CaptureSink, FanoutSink
from fleet.mqtt import BrokerUrl
from fleet.protocol.messages import ApiOp, ApiRequest
from tests.support.brokers import BrokerHandle
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for

pytestmark = pytest.mark.timeout(150)


async def test_an_echo_agent_rejoins_after_a_broker_restart(
    amqtt_broker: BrokerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fleet.agents")
    secrets = register_devices(amqtt_broker, 1)
    url = BrokerUrl.parse(
        amqtt_broker.url("agent-echo", amqtt_broker.add_user("agent-echo", Role.AGENT))
    )
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db") as ctl,
        sim_fleet(amqtt_broker, secrets, driver_factory=audio_drivers(["dev-1"])) as fleet,
        operator(amqtt_broker) as op,
    ):
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="echo"))).ok
        drv = fleet["dev-1"].driver
        async with agent_in_room(
            url, "agent-echo", "echo", EchoAgent(), amqtt_broker.topics
        ) as echo:

            def hears_itself_back() -> bool:
                peer = echo.participant
                return peer in drv.heard.peers() and drv.hears_tone(peer, tone_for(0), 0.5)  # type: ignore[attr-defined]

            await wait_for(hears_itself_back, 20, "dev-1 hears its tone echoed")
            before = echo.participant
            await amqtt_broker.restart()
            meetings = ctl.parts[0]

            def rejoined() -> bool:
                live = meetings.live.get("echo")  # type: ignore[attr-defined]
                return (
                    live is not None
                    and echo.session == live.id
                    and echo.participant != before
                    and echo.participant in live.members
                )

            await wait_for(rejoined, 60, "the agent joined again after the restart")
            # The agent signals again: dev-1 rejoining offers to it, and the echo is back.
            async with operator(amqtt_broker) as again:  # an operator's client is one-shot
                assert (await again.request(ApiOp.LEAVE, ApiRequest(device="dev-1"))).ok
                rejoin = ApiRequest(device="dev-1", room="echo")
                assert (await again.request(ApiOp.JOIN, rejoin)).ok
            drv.heard = CaptureSink(keep_s=2.0)  # type: ignore[attr-defined]
            drv.mesh.sink = FanoutSink(drv.levels, drv.heard)  # type: ignore[attr-defined]
            await wait_for(hears_itself_back, 30, "the echo again after the restart")
    said = [r.getMessage() for r in caplog.records if r.name == "fleet.agents"]
    assert any("agent agent-echo joined echo as" in m for m in said), said
    assert any("(dev-1) is here" in m for m in said), said
    assert any("leaving echo" in m for m in said), said
