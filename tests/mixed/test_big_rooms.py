"""Big simulated fleets in mixed rooms: devices in worker processes (as `fleet up` runs
more than a few), and `fleet demo` past the mesh cap, with a real Janus in a network
namespace of the module's own (WebRTC needs an address that is not loopback)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from cli.demo import hearing_table, wait_until_everyone_hears
from cli.stack import StackConfig, free_port, running_stack
from fleet.client import FleetClient
from fleet.errors import FleetError
from fleet.mixer.process import JanusProcess
from fleet.protocol.messages import ApiOp, ApiRequest, MediaPath
from tests.support.cli import fleet
from tests.support.netns import Netns

pytestmark = pytest.mark.timeout(240)

DEVICES = 10  # past the mesh cap (4) and past what one process runs (8)


async def test_worker_processes_hold_an_auto_room_past_the_mesh_cap(
    mixed_net: Netns, janus: JanusProcess, tmp_path: Path
) -> None:
    config = StackConfig(
        home=tmp_path,
        devices=DEVICES,
        port=free_port(),
        sim_procs=2,
        mixer=False,  # the module's Janus instead
        mixers=[janus.url],
        tele_interval_s=2.0,
    )
    async with running_stack(config) as stack:
        await stack.wait_ready()
        workers = stack.workers
        assert workers is not None
        assert not stack.fleet.devices  # every device is in a worker
        pids = workers.pids
        assert len(pids) == 2
        async with FleetClient(stack.operator_url, stack.controller.topics) as op:
            # An auto room, as the README's flow joins it: mesh up to 4, then the mixer.
            result = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=30))
            assert result.ok, result
            hearing = await wait_until_everyone_hears(workers, 30)
            assert hearing.complete, hearing_table(hearing)
            assert not hearing.hears_itself()
            # One stream each, the mix, named after the mixer.
            assert all(set(levels) == {"janus-1"} for levels in hearing.levels.values())
            session = (await op.request(ApiOp.SESSIONS, ApiRequest(room="standup"))).sessions[0]
            assert session.media is MediaPath.MIXED
            assert len(session.participants) == DEVICES
            # A request a worker does not know is refused, and the workers go on.
            with pytest.raises(FleetError, match="unknown op"):
                await workers.ask({"op": "karaoke"})
            assert len(await workers.hearing(0.05)) == DEVICES
        # A worker that dies ends the stack's sim-workers task with the reason (`fleet up`
        # reports it and stops).
        watch = next(t for t in stack.tasks if t.get_name() == "sim-workers")
        assert not watch.done()
        os.kill(pids[0], signal.SIGKILL)
        async with asyncio.timeout(10):
            with pytest.raises(FleetError, match=f"sim worker {pids[0]} exited"):
                await watch
        assert isinstance(stack.failed(), FleetError)
    # The workers end with the stack: none outlives it.
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)  # noqa: ASYNC240


async def test_demo_past_the_mesh_cap_meets_in_a_mixed_room_and_exits_0(
    mixed_net: Netns, tmp_path: Path
) -> None:
    code, out, err = await fleet("demo", "--devices", str(DEVICES), home=tmp_path, timeout=180)
    assert code == 0, (out, err)
    assert "every device hears every other" in out
    assert out.count(f"{DEVICES - 1} of the other {DEVICES - 1}") == DEVICES
    assert "and itself" not in out
    assert "(mixed on janus-1)" in out
    assert "demo passed" in out
    assert "Traceback" not in err
