"""Chaos: kill -9 of the controller, the broker and device processes at random points of a
200-device sequence of join-all, leave, join, expiry and leave-all.

Every part is its own process, as in a deployment: Mosquitto (persistent), `fleet
controller`, four `fleet sim` processes of 50 devices. A chaos task kills one of them
with SIGKILL at random moments and starts it again; the operator meanwhile sends one
request after another through a fresh client (the broker may be down). The seed of each
run is printed. Afterwards, with every process up again:

- every device reports the last desired state the controller holds (its store's docs,
  lapsed intents as no meeting), and no accepted intent was lost (its rev is at or below
  what each target applied);
- no rev was reused: on the wire, one rev is one doc on one topic;
- no operation was reported ok that did not hold: when the controller said ok, every
  target it listed as converged reported the op's rev (or a later one), and at the op's
  rev the op's room (none for a leave).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from fleet.auth import Role
from fleet.client import FleetClient
from fleet.errors import FleetError
from fleet.protocol import TopicKind, decode
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult, Desired, DeviceOutcome
from tests.support import ROOT
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import operator_url, register_devices, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto, pytest.mark.timeout(300)]

DEVICES = 200
SIMS = 4  # processes of DEVICES / SIMS devices each
STEPS = 30  # operator requests per run, at most
SEQUENCE_S = 25.0  # and at most this long
ROOMS = ("standup", "retro", "focus", "lunch")


@dataclass
class Proc:
    """One `fleet` subprocess that chaos may kill and start again."""

    name: str
    args: list[str]
    log: Path
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "COLUMNS": "200"}
        env.pop("FLEET_BROKER", None)
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "cli.main", *self.args),
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None


@dataclass
class Record:
    """What the operator saw: accepted revs, ok results checked, every desired doc."""

    accepted: list[tuple[ApiOp, ApiRequest, int]] = field(default_factory=list)
    docs: dict[int, set[tuple[str, bytes]]] = field(default_factory=dict)  # rev -> (topic, doc)
    false_oks: list[str] = field(default_factory=list)
    oks: int = 0


class Broker:
    """The Mosquitto of `handle`, killed with SIGKILL and started again on its port."""

    def __init__(self, handle: BrokerHandle) -> None:
        self.handle = handle
        self.name = "broker"

    async def kill(self) -> None:
        await asyncio.to_thread(self.handle.backend.kill_sync)  # type: ignore[attr-defined]

    async def start(self) -> None:
        await self.handle.backend.start()


async def record_docs(handle: BrokerHandle, record: Record, client_id: str) -> None:
    """Every desired doc on the wire, across broker restarts (a persistent session)."""
    t = handle.topics
    url = operator_url(handle)
    while True:
        try:
            async with mqtt_client(
                handle, url.username, url.password, client_id=client_id, clean_session=False
            ) as client:
                await client.subscribe(
                    [(t.all_devices(TopicKind.DESIRED), 1), (t.all_group_desired, 1)]
                )
                async for message in client.messages:
                    payload = bytes(message.payload) if message.payload else b""  # type: ignore[arg-type]
                    if payload:
                        rev = decode(Desired, payload).rev
                        record.docs.setdefault(rev, set()).add((message.topic.value, payload))
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


async def chaos(rng: random.Random, parts: list[Proc | Broker], kills: list[str]) -> None:
    while True:
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        victim = rng.choice(parts)
        kills.append(victim.name)
        await victim.kill()
        await asyncio.sleep(rng.uniform(0.1, 0.8))
        await victim.start()


async def kill_at(when: float, victim: Proc, kills: list[str]) -> None:
    await asyncio.sleep(max(0.0, when - time.time()))
    kills.append(f"{victim.name}@lapse")
    await victim.kill()
    await asyncio.sleep(0.3)
    if victim.proc is None:
        await victim.start()


def next_request(rng: random.Random, step: int) -> tuple[ApiOp, ApiRequest]:
    roll = rng.random()
    rid = f"c{step}-{rng.getrandbits(32):08x}"
    device = f"dev-{rng.randint(1, DEVICES)}"
    room = rng.choice(ROOMS)
    if roll < 0.30:
        return ApiOp.JOIN_ALL, ApiRequest(id=rid, room=room, timeout_s=4)
    if roll < 0.45:
        return ApiOp.JOIN_ALL, ApiRequest(
            id=rid, room=room, for_s=round(rng.uniform(0.5, 2.0), 2), timeout_s=4
        )
    if roll < 0.65:
        return ApiOp.LEAVE, ApiRequest(id=rid, device=device, timeout_s=4)
    if roll < 0.85:
        return ApiOp.JOIN, ApiRequest(id=rid, device=device, room=room, timeout_s=4)
    return ApiOp.LEAVE_ALL, ApiRequest(id=rid, timeout_s=4)


async def send(url: object, handle: BrokerHandle, op: ApiOp, request: ApiRequest, rec: Record):  # type: ignore[no-untyped-def]
    """One request through a fresh operator client; its result, or None (nobody answered)."""
    try:
        async with asyncio.timeout(5), FleetClient(url, handle.topics) as fleet:  # type: ignore[arg-type]
            result = await fleet.request(op, request)
            if result.ok and result.done and result.rev is not None:
                await check_ok(fleet, op, request, result, rec)
            return result
    except (FleetError, aiomqtt.MqttError, TimeoutError):
        return None


async def check_ok(
    fleet: FleetClient, op: ApiOp, request: ApiRequest, result: ApiResult, rec: Record
) -> None:
    """An ok result must hold: what the devices themselves report (the operator's own view
    of their retained state) agrees with every device the result calls converged."""
    assert result.rev is not None
    rec.oks += 1
    room = request.room if op in (ApiOp.JOIN, ApiOp.JOIN_ALL) else None
    claimed = [d.device for d in result.devices if d.outcome is DeviceOutcome.CONVERGED]

    def holds(device_id: str) -> bool:
        state = fleet.registry.devices.get(device_id)
        rev = state.rev if state is not None else None
        if rev is None or rev < (result.rev or 0):
            return False
        return rev > (result.rev or 0) or state.room == room  # type: ignore[union-attr]

    with contextlib.suppress(TimeoutError):  # the operator's view may lag by a message
        await wait_for(lambda: all(holds(d) for d in claimed), timeout=3)
    bad = [d for d in claimed if not holds(d)]
    if bad:
        rec.false_oks.append(f"{op.value} {request.id} rev {result.rev}: {bad[:5]}")


def effective(db: Path, now: float) -> dict[str, tuple[int, str | None]]:
    """Per device, (rev, room) of the controller's last desired state: its highest-rev doc
    of its own and grp/all, a lapsed intent as no meeting."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT scope, name, doc FROM desired").fetchall()
    finally:
        con.close()
    docs = {(scope, name): decode(Desired, doc) for scope, name, doc in rows}
    out: dict[str, tuple[int, str | None]] = {}
    for n in range(1, DEVICES + 1):
        device = f"dev-{n}"
        best = max(
            (d for d in (docs.get(("dev", device)), docs.get(("grp", "all"))) if d is not None),
            key=lambda d: d.rev,
            default=None,
        )
        if best is None:
            out[device] = (0, None)
            continue
        meeting = best.meeting
        lapsed = meeting is not None and meeting.until is not None and meeting.until <= now
        out[device] = (best.rev, None if meeting is None or lapsed else meeting.room)
    return out


@contextlib.asynccontextmanager
async def platform(handle: BrokerHandle, tmp_path: Path) -> AsyncIterator[list[Proc]]:
    secrets = register_devices(handle, DEVICES)
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps(secrets))
    ctl_secret = handle.add_user("chaos-ctl", Role.CONTROLLER)
    await handle.sync()
    broker = f"mqtt://{handle.host}:{handle.port}"
    prefix = ("--prefix", handle.topics.prefix)
    ctl_url = handle.url("chaos-ctl", ctl_secret)
    procs = [
        Proc(
            "controller",
            [
                "controller",
                "--db",
                str(tmp_path / "ctl.db"),
                "--no-ha",
                "--broker",
                ctl_url,
                *prefix,
            ],
            tmp_path / "controller.log",
        )
    ]
    per = DEVICES // SIMS
    for k in range(SIMS):
        procs.append(
            Proc(
                f"sim-{k}",
                [
                    "sim",
                    *("--devices", str(per), "--start", str(1 + k * per)),
                    *("--secrets", str(secrets_file), "--broker", broker, *prefix),
                    *("--tele-interval", "60"),
                ],
                tmp_path / f"sim-{k}.log",
            )
        )
    for p in procs:
        await p.start()
    try:
        yield procs
    finally:
        for p in procs:
            await p.stop()


@pytest.mark.parametrize("seed", [11, 23, 47])
async def test_kill_9_anywhere_in_a_200_device_sequence(
    mosquitto_broker: BrokerHandle, tmp_path: Path, seed: int
) -> None:
    print(f"chaos seed {seed}")
    rng = random.Random(seed)
    handle = mosquitto_broker
    url = operator_url(handle)
    rec = Record()
    kills: list[str] = []
    recorder = asyncio.create_task(record_docs(handle, rec, f"{url.username}-rec-{seed}"))
    async with platform(handle, tmp_path) as procs:
        # Everyone up before the chaos starts: a fleet of 200 that the controller knows.
        async with FleetClient(url, handle.topics) as fleet:
            await wait_for(
                lambda: fleet.registry.online_count() == DEVICES, timeout=60, what="fleet up"
            )
        monkey = asyncio.create_task(chaos(rng, [*procs, Broker(handle)], kills))
        results: list[ApiResult | None] = []
        pending: list[asyncio.Task[None]] = []
        try:
            ends = time.monotonic() + SEQUENCE_S
            for step in range(STEPS):
                if time.monotonic() > ends:
                    break  # a run that lost much time to dead parts stops at its budget
                op, request = next_request(rng, step)
                result = await send(url, handle, op, request, rec)
                results.append(result)
                if result is None:
                    await asyncio.sleep(0.3)  # nobody answered: let the part come back
                    continue
                if result.rev is not None:
                    rec.accepted.append((op, request, result.rev))
                if result.until is not None:
                    # The narrowest windows are in the expiry: a kill of the controller
                    # while it ends the intent, the next request while it does.
                    at = result.until + rng.uniform(0.0, 0.3)
                    pending.append(asyncio.create_task(kill_at(at, procs[0], kills)))
                    if rng.random() < 0.7:
                        await asyncio.sleep(max(0.0, result.until - time.time()))
                        await asyncio.sleep(rng.uniform(0.0, 0.3))
        finally:
            monkey.cancel()
            await asyncio.gather(monkey, *pending, return_exceptions=True)
        # Calm: everything runs again; the last lapse passes; the fleet settles.
        calm = time.monotonic()
        for p in [*procs, Broker(handle)]:
            if isinstance(p, Broker):
                if handle.backend.proc is None:  # type: ignore[attr-defined]
                    await p.start()
            elif p.proc is None:
                await p.start()
        db = tmp_path / "ctl.db"
        # A request that gets an answer proves the controller is back and synced.
        async with asyncio.timeout(60):
            while await send(url, handle, ApiOp.ROOMS, ApiRequest(), rec) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.5)
        await asyncio.sleep(2.5)  # every `for_s` (2 s at most) has lapsed by now

        async with FleetClient(url, handle.topics) as fleet:

            def settled() -> bool:
                want = effective(db, time.time())
                return all(
                    (rec_ := fleet.registry.devices.get(d)) is not None
                    and rec_.online
                    and rec_.rev == rev
                    and rec_.room == room
                    for d, (rev, room) in want.items()
                )

            try:
                await wait_for(settled, timeout=60, what="every device in its last intent")
            except TimeoutError:
                want = effective(db, time.time())
                off = {
                    d: (want[d], fleet.registry.devices[d].rev, fleet.registry.devices[d].room)
                    for d in want
                    if d in fleet.registry.devices
                    and (fleet.registry.devices[d].rev, fleet.registry.devices[d].room) != want[d]
                }
                pytest.fail(
                    f"seed {seed}, kills {kills}: {len(off)} devices off: {list(off.items())[:5]}"
                )
            final = {d: r.rev or 0 for d, r in fleet.registry.devices.items()}
    recorder.cancel()
    summary = (
        f"seed {seed}: {len(kills)} kills {kills}, {len(results)} requests, "
        f"{len(rec.accepted)} accepted, {rec.oks} ok; settled in {time.monotonic() - calm:.1f}s"
    )
    print(summary)
    assert rec.false_oks == [], f"{summary}: ok results that did not hold: {rec.false_oks}"
    reused = {rev: docs for rev, docs in rec.docs.items() if len(docs) > 1}
    assert reused == {}, f"{summary}: revs reused: {list(reused.items())[:3]}"
    lost = [
        (request.id, rev, d)
        for op, request, rev in rec.accepted
        for d in ([request.device] if request.device else final)
        if final.get(d or "", 0) < rev
    ]
    assert lost == [], f"{summary}: accepted intents lost: {lost[:5]}"
    assert kills, f"{summary}: chaos killed nothing"
