"""A fan-out interrupted: `leave-all` sent while a 2,000-device join-all is still converging
is accepted and carried out, and every device ends out of the meeting.

The devices are a `fleet sim` process (the bulk engine, as the fan-out bench runs them),
so they take their own time beside the controller. The same operator user sends both
requests: the leave-all waits in that requester's own queue of the controller's requests
lane, for the join-all's acceptance only, never for its devices.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from fleet.auth import Role
from fleet.protocol import TopicKind
from fleet.protocol.messages import ApiOp, ApiRequest, State, decode
from tests.support import ROOT
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import (
    controller,
    operator,
    operator_url,
    register_devices,
    wait_for,
)

DEVICES = 2000


async def test_leave_all_in_the_middle_of_a_join_all(
    mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    h = mosquitto_broker
    # The controller's and the operator's users first: each new user makes Mosquitto
    # reload its files, slow with thousands of devices in them.
    h.controller_url()
    operator_url(h)
    watch_secret = h.add_user("watch", Role.CONTROLLER)
    secrets = register_devices(h, DEVICES)
    (tmp_path / "secrets.json").write_text(json.dumps(secrets))
    env = {**os.environ, "FLEET_HOME": str(tmp_path)}
    env.pop("FLEET_BROKER", None)
    sims = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "sim",
        "--devices",
        str(DEVICES),
        "--secrets",
        str(tmp_path / "secrets.json"),
        "--broker",
        f"mqtt://{h.host}:{h.port}",
        "--prefix",
        h.prefix,
        "--tele-interval",
        "600",
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with (
            controller(h, tmp_path / "ctl.db") as ctl,
            operator(h) as joiner,
            operator(h) as leaver,
        ):
            await wait_for(lambda: ctl.registry.online_count() == DEVICES, 120, "devices online")
            join = asyncio.create_task(
                joiner.request(ApiOp.JOIN_ALL, ApiRequest(room="all-hands", timeout_s=120))
            )

            # Sent once the controller has seen its first devices in the meeting, not all:
            # the lanes serve reports in bounded batches and this looks at every loop turn.
            def in_meeting() -> int:
                return sum(1 for r in ctl.registry.devices.values() if r.state and r.state.meeting)

            async with asyncio.timeout(60):
                while in_meeting() == 0:
                    assert not join.done(), join.result()
                    await asyncio.sleep(0)
            seen = in_meeting()
            assert seen < DEVICES
            left = await leaver.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=120))
            print(f"leave-all sent with {seen} of {DEVICES} devices seen in the meeting")
            assert left.ok, left.detail
            assert left.counts == {"converged": DEVICES}
            joined = await join  # its verdict, whatever it is, comes: nothing is left hanging
            assert joined.done
            assert joined.rev is not None
            assert left.rev is not None
            assert left.rev > joined.rev
            rows = ctl.registry.devices
            assert [d for d in secrets if rows[d].state is None or rows[d].state.meeting] == []
            # What the devices themselves say, retained on the broker: out, at the new rev.
            async with mqtt_client(h, "watch", watch_secret) as watch:
                await watch.subscribe(h.topics.all_devices(TopicKind.STATE), qos=1)
                states: dict[str, State] = {}
                async with asyncio.timeout(60):
                    async for message in watch.messages:
                        device = message.topic.value.split("/")[-2]
                        states[device] = decode(State, bytes(message.payload))
                        if len(states) == DEVICES:
                            break
            assert sorted(states) == sorted(secrets)
            assert [
                d for d, s in states.items() if s.meeting is not None or s.rev != left.rev
            ] == []
    finally:
        if sims.returncode is None:
            sims.terminate()
            async with asyncio.timeout(30):
                await sims.wait()
