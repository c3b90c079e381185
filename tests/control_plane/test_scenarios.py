"""The control plane's scenarios, each against in-process amqtt and a real Mosquitto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.protocol.messages import ApiOp, ApiRequest, DeviceOutcome
from tests.support.brokers import BrokerHandle
from tests.support.running import (
    controller,
    one_device,
    operator,
    register_devices,
    sim_fleet,
    wait_for,
)

ENGINES = pytest.mark.parametrize("engine", ["aiomqtt", "bulk"])


@ENGINES
async def test_join_all_converges_fifty_devices(
    any_broker: BrokerHandle, tmp_path: Path, engine: str
) -> None:
    secrets = register_devices(any_broker, 50)
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        sim_fleet(any_broker, secrets, engine=engine) as fleet,
        operator(any_broker) as op,
    ):
        result = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=20))
        assert result.ok, result.detail
        assert result.counts == {"converged": 50}
        assert {d.device for d in result.devices} == set(secrets)
        assert all(
            dev.meeting is not None and dev.meeting.room == "standup" for dev in fleet.devices
        )
        assert all(dev.reconciler.applied.rev == result.rev for dev in fleet.devices)
        # The operator's registry, built from retained state only, agrees.
        await op.sync()
        assert all(op.registry.devices[d].room == "standup" for d in secrets)


async def test_offline_device_converges_when_it_comes_back(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 4)
    late = {"dev-4": secrets.pop("dev-4")}
    async with controller(any_broker, tmp_path / "ctl.db"), operator(any_broker) as op:
        # dev-4 announces itself, then goes away before the join-all.
        async with one_device(any_broker, "dev-4", late["dev-4"]):
            pass
        async with sim_fleet(any_broker, secrets):
            await wait_for(
                lambda: "dev-4" in op.registry.devices and not op.registry.devices["dev-4"].online,
                what="dev-4 offline",
            )
            result = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=10))
            assert result.ok, "every online target converged"
            outcomes = {d.device: d.outcome for d in result.devices}
            assert outcomes["dev-4"] is DeviceOutcome.PENDING
            assert [o for d, o in outcomes.items() if d != "dev-4"] == [DeviceOutcome.CONVERGED] * 3
            async with one_device(any_broker, "dev-4", late["dev-4"]) as dev4:
                await wait_for(lambda: dev4.meeting is not None, what="dev-4 joins on return")
                assert dev4.meeting is not None
                assert dev4.meeting.room == "standup"
                assert dev4.reconciler.applied.rev == result.rev


async def test_leave_one_after_join_all_wins_and_a_later_join_all_wins_again(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 4)
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        sim_fleet(any_broker, secrets) as fleet,
        operator(any_broker) as op,
    ):
        first = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))
        leave = await op.request(ApiOp.LEAVE, ApiRequest(device="dev-3"))
        assert first.ok
        assert leave.ok
        assert leave.rev is not None
        assert first.rev is not None
        assert leave.rev > first.rev
        assert fleet["dev-3"].meeting is None
        assert all(fleet[d].meeting is not None for d in ("dev-1", "dev-2", "dev-4"))
        again = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="retro"))
        assert again.ok
        rooms = {dev.id: dev.meeting.room if dev.meeting else None for dev in fleet.devices}
        assert rooms == dict.fromkeys(secrets, "retro")


async def test_group_join_targets_only_the_group(any_broker: BrokerHandle, tmp_path: Path) -> None:
    kitchen = register_devices(any_broker, 2, groups=["kitchen"], prefix="k")
    others = register_devices(any_broker, 2, prefix="o")
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        sim_fleet(any_broker, kitchen, groups=["kitchen"]) as kfleet,
        sim_fleet(any_broker, others) as ofleet,
        operator(any_broker) as op,
    ):
        result = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="lunch", group="kitchen"))
        assert result.ok
        assert {d.device for d in result.devices} == set(kitchen)
        assert all(d.meeting and d.meeting.room == "lunch" for d in kfleet.devices)
        assert all(d.meeting is None for d in ofleet.devices)


async def test_controller_restart_keeps_registry_and_revs(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 5)
    async with sim_fleet(any_broker, secrets) as fleet, operator(any_broker) as op:
        async with controller(any_broker, tmp_path / "ctl.db"):
            first = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))
        assert first.ok
        assert first.rev is not None
        async with controller(any_broker, tmp_path / "ctl.db") as ctl:
            # Synced: the retained fleet has been read (the registry starts from kept births).
            await wait_for(
                lambda: ctl.synced and len(ctl.registry.devices) == 5, what="registry rebuilt"
            )
            assert all(
                rec.online and rec.room == "standup" for rec in ctl.registry.devices.values()
            )
            second = await op.request(ApiOp.LEAVE, ApiRequest(device="dev-2"))
            assert second.ok
            assert second.rev is not None
            assert second.rev > first.rev
        # Even a controller whose database is gone never hands out an old rev again:
        # it raises its floor from the revs it sees retained on the broker.
        async with controller(any_broker, tmp_path / "fresh.db") as ctl:
            await wait_for(lambda: len(ctl.registry.devices) == 5, what="registry rebuilt")
            third = await op.request(ApiOp.JOIN, ApiRequest(device="dev-2", room="standup"))
            assert third.ok
            assert third.rev is not None
            assert third.rev > second.rev
            assert fleet["dev-2"].meeting is not None


@ENGINES
async def test_broker_restart_loses_no_intent(
    any_broker: BrokerHandle, tmp_path: Path, engine: str
) -> None:
    secrets = register_devices(any_broker, 6)
    async with (
        controller(any_broker, tmp_path / "ctl.db") as ctl,
        sim_fleet(any_broker, secrets, engine=engine) as fleet,
    ):
        async with operator(any_broker) as op:
            joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))
            left = await op.request(ApiOp.LEAVE, ApiRequest(device="dev-6"))
        assert joined.ok
        assert left.ok
        connects = {dev.id: dev.connects for dev in fleet.devices}
        await any_broker.restart()
        await wait_for(
            lambda: all(
                dev.connects > connects[dev.id] and dev.connected.is_set() for dev in fleet.devices
            ),
            timeout=20,
            what="devices back",
        )
        await wait_for(lambda: ctl.connected.is_set(), what="controller back")
        async with operator(any_broker) as op:
            # A device that forgets everything (reboot) must find its last intent on the
            # broker: amqtt lost its retained docs, so the controller re-asserted them.
            for device in ("dev-1", "dev-6"):
                before = fleet[device].connects
                rebooted = await op.request(
                    ApiOp.CMD, ApiRequest(device=device, cmd_op="reboot", timeout_s=10)
                )
                assert rebooted.ok, rebooted.detail
                assert fleet[device].connects > before
            await wait_for(lambda: fleet["dev-1"].meeting is not None, what="dev-1 in its room")
            assert fleet["dev-1"].meeting is not None
            assert fleet["dev-1"].meeting.room == "standup"
            assert fleet["dev-1"].reconciler.applied.rev == joined.rev
            assert fleet["dev-6"].meeting is None
            assert fleet["dev-6"].reconciler.applied.rev == left.rev
            await wait_for(lambda: ctl.registry.online_count() == 6, what="all online again")
            # And the operator's view, from retained state alone, is whole again.
            assert op.registry.online_count() == 6
            rooms = {d: op.registry.devices[d].room for d in secrets}
            assert rooms == {**dict.fromkeys(secrets, "standup"), "dev-6": None}


async def test_commands_ping_identify_and_audit_log(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 2)
    async with (
        controller(any_broker, tmp_path / "ctl.db") as ctl,
        sim_fleet(any_broker, secrets),
        operator(any_broker) as op,
    ):
        ping = await op.request(ApiOp.CMD, ApiRequest(device="dev-1", cmd_op="ping"))
        assert ping.ok
        assert ping.devices[0].outcome is DeviceOutcome.SUCCEEDED
        assert ping.devices[0].result is not None
        assert ping.devices[0].result["uptime_s"] >= 0
        ident = await op.request(
            ApiOp.CMD, ApiRequest(device="dev-2", cmd_op="identify", args={"seconds": 2})
        )
        assert ident.ok
        bad = await op.request(
            ApiOp.CMD, ApiRequest(device="dev-2", cmd_op="identify", args={"seconds": "long"})
        )
        assert not bad.ok
        assert bad.devices[0].outcome is DeviceOutcome.REJECTED
        assert bad.code == "bad_args"
        unknown = await op.request(ApiOp.CMD, ApiRequest(device="dev-1", cmd_op="selfdestruct"))
        assert not unknown.ok
        assert unknown.code == "unknown_op"
        reboot = await op.request(ApiOp.CMD, ApiRequest(device="dev-1", cmd_op="reboot"))
        assert reboot.ok
        assert reboot.devices[0].outcome is DeviceOutcome.SUCCEEDED
        # The audit log: a job row per command with its real outcome, and an operation row
        # per request holding the final result the operator got.
        jobs = {job.id: job for job in ctl.store.jobs()}
        expected = {
            ping.id: ("ping", DeviceOutcome.SUCCEEDED),
            ident.id: ("identify", DeviceOutcome.SUCCEEDED),
            bad.id: ("identify", DeviceOutcome.REJECTED),
            unknown.id: ("selfdestruct", DeviceOutcome.REJECTED),
            reboot.id: ("reboot", DeviceOutcome.SUCCEEDED),
        }
        assert {i: (jobs[i].op, jobs[i].status) for i in expected} == expected
        operations = {op_id: (name, res) for op_id, name, _, res in ctl.store.operations()}
        for result in (ping, ident, bad, unknown, reboot):
            name, final = operations[result.id]
            assert name == "cmd"
            assert final is not None, f"{result.id} has no final result in the log"
            assert (json.loads(final)["ok"], json.loads(final)["code"]) == (result.ok, result.code)


async def test_command_to_offline_device_is_queued_then_runs_or_times_out(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 1)
    async with controller(amqtt_broker, tmp_path / "ctl.db") as ctl, operator(amqtt_broker) as op:
        async with one_device(amqtt_broker, "dev-1", secrets["dev-1"]):
            pass  # known, now offline
        await wait_for(
            lambda: "dev-1" in ctl.registry.devices and not ctl.registry.devices["dev-1"].online,
            what="dev-1 offline",
        )
        stale = await op.request(
            ApiOp.CMD, ApiRequest(device="dev-1", cmd_op="ping", ttl_ms=300, timeout_s=1)
        )
        assert not stale.ok
        assert stale.devices[0].outcome is DeviceOutcome.TIMED_OUT
        import asyncio

        queued = asyncio.create_task(
            op.request(
                ApiOp.CMD, ApiRequest(id="held-ping", device="dev-1", cmd_op="ping", ttl_ms=20_000)
            )
        )
        await wait_for(
            lambda: any(
                j.id == "held-ping" and j.status is DeviceOutcome.QUEUED for j in ctl.store.jobs()
            ),
            what="job queued",
        )
        async with one_device(amqtt_broker, "dev-1", secrets["dev-1"]):
            result = await queued
        assert result.ok
        assert result.devices[0].outcome is DeviceOutcome.SUCCEEDED


async def test_set_groups_moves_a_device_into_a_group(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 2)
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db") as ctl,
        sim_fleet(amqtt_broker, secrets) as fleet,
        operator(amqtt_broker) as op,
    ):
        moved = await op.request(
            ApiOp.CMD, ApiRequest(device="dev-1", cmd_op="set_groups", args={"groups": ["kitchen"]})
        )
        assert moved.ok, moved.detail
        await wait_for(
            lambda: ctl.registry.devices["dev-1"].groups == ["kitchen"],
            what="new birth with the group",
        )
        result = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="lunch", group="kitchen"))
        assert result.ok
        assert [d.device for d in result.devices] == ["dev-1"]
        assert fleet["dev-1"].meeting is not None
        assert fleet["dev-2"].meeting is None
