"""Imperative commands as jobs: sent with a ttl, held for a device that is offline,
followed through its acks to a final state, timed out when no final ack comes."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.controller.events import FleetEvents
from fleet.controller.link import ControllerLink
from fleet.controller.store import FINAL_JOB_STATES, Job, Store
from fleet.errors import RequestRefused
from fleet.mqtt import publish
from fleet.protocol import Topics, encode
from fleet.protocol.messages import (
    REJECT_CODES,
    Ack,
    ApiOp,
    ApiRequest,
    ApiResult,
    Command,
    CommandOp,
    DeviceOutcome,
    DeviceResult,
    EventKind,
    FleetEvent,
)
from fleet.registry import Registry

log = logging.getLogger(__name__)


class GroupAcl(Protocol):
    """Where device credentials keep the groups the broker lets a device read."""

    def set_groups(self, username: str, groups: list[str]) -> Any: ...


class Commands:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        topics: Topics,
        link: ControllerLink,
        events: FleetEvents,
        credentials: GroupAcl | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._topics = topics
        self._link = link
        self._events = events
        # With the embedded broker the controller keeps device credentials' groups in step
        # with set_groups, so the broker lets the device read its new groups' desired docs.
        self._credentials = credentials
        self._jobs: dict[str, Job] = {job.id: job for job in store.open_jobs()}

    @property
    def open_jobs(self) -> dict[str, Job]:
        """Jobs not yet final, by id."""
        return self._jobs

    async def start(self, request: ApiRequest) -> CommandTracker:
        """A `cmd` request: its job stored, sent at once to a device online."""
        device = request.device or ""
        rec = self._registry.devices.get(device)
        if rec is None:
            raise RequestRefused(
                "unknown_device", f"unknown device {device!r}: it never announced itself"
            )
        now = time.time()
        job = Job(
            id=request.id or uuid.uuid4().hex[:12],
            device=device,
            op=request.cmd_op or "",
            args=dict(request.args),
            ttl_ms=request.ttl_ms,
            created=now,
            expires=now + request.ttl_ms / 1000,
        )
        if job.op == CommandOp.SET_GROUPS.value and self._credentials is not None:
            await self._grant_groups(job)
        self._store.save_job(job)  # first: a job the log cannot hold is never sent
        self._jobs[job.id] = job
        tracker = CommandTracker(request, job, online=rec.online)
        if rec.online:
            await self._send(job)
        return tracker

    async def _grant_groups(self, job: Job) -> None:
        groups = job.args.get("groups")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            return  # the device refuses it with bad_args
        assert self._credentials is not None
        try:
            # In a thread: it rewrites the whole credentials file (~0.1 s at 20,000 users).
            await asyncio.to_thread(
                self._credentials.set_groups, job.device, [g for g in groups if g != "all"]
            )
        except Exception as exc:  # the device then fails to subscribe and says so
            log.warning("could not grant groups %s to %s: %s", groups, job.device, exc)

    async def _send(self, job: Job) -> None:
        client = self._link.client
        if client is None or time.time() >= job.expires:
            return
        cmd = Command(
            id=job.id,
            op=job.op,
            args=job.args,
            ttl_ms=max(1, int((job.expires - time.time()) * 1000)),
            ts=time.time(),
        )
        # MQTT 5: the broker drops the command once its ttl passed (a device back from a
        # network drop with its session queue must not reboot an hour late).
        await publish(
            client, self._topics.cmd(job.device), encode(cmd), qos=1, expiry_s=cmd.ttl_ms / 1000
        )
        job.status = DeviceOutcome.SENT
        self._store.save_job(job)

    async def send_held(self, device_id: str) -> None:
        """The device came online: commands held for it go out, unless they went stale."""
        for job in list(self._jobs.values()):
            if job.device == device_id and job.status is DeviceOutcome.QUEUED:
                await self._send(job)

    async def on_ack(self, device_id: str, ack: Ack) -> bool:
        """Move the job the ack is for; False when it matches no open job."""
        job = self._jobs.get(ack.id)
        if job is None or job.device != device_id or job.final:
            log.debug("ack %s from %s matches no open job", ack.id, device_id)
            return False
        if not ack.done:
            job.status = DeviceOutcome.DELIVERED
        elif ack.ok:
            job.status = DeviceOutcome.SUCCEEDED
        elif ack.code in REJECT_CODES:
            job.status = DeviceOutcome.REJECTED
        else:
            job.status = DeviceOutcome.FAILED
        job.code = ack.code.value
        job.detail = ack.detail or job.detail
        job.result = ack.result if ack.result is not None else job.result
        self._store.save_job(job)
        # The new status: mypy would hold `job.final` False from the guard above.
        if job.status in FINAL_JOB_STATES:
            self._jobs.pop(job.id, None)
            await self._job_event(job)
        return True

    async def expire(self, now: float) -> None:
        """Time out every job whose ttl passed without a final ack."""
        for job in list(self._jobs.values()):
            if now >= job.expires and not job.final:
                job.status = DeviceOutcome.TIMED_OUT
                job.code = "timed_out"
                job.detail = f"no final ack within {job.ttl_ms} ms"
                self._store.save_job(job)
                self._jobs.pop(job.id, None)
                await self._job_event(job)

    async def _job_event(self, job: Job) -> None:
        await self._events.emit(
            FleetEvent(
                ts=time.time(),
                kind=EventKind.COMMAND,
                device=job.device,
                op=job.op[:256],
                ok=job.status is DeviceOutcome.SUCCEEDED,
                code=job.code,
                detail=job.detail[:256] if job.detail else None,
            )
        )


@dataclass(slots=True)
class CommandTracker:
    """Follows one imperative command until its job reaches a final state."""

    request: ApiRequest
    job: Job
    online: bool

    @property
    def done(self) -> bool:
        return self.job.final

    def result(self, *, final: bool) -> ApiResult:
        job = self.job
        outcome = DeviceResult(
            device=job.device,
            outcome=job.status,
            online=self.online,
            code=job.code,
            detail=job.detail,
            result=job.result,
        )
        ok = job.status is DeviceOutcome.SUCCEEDED if final else True
        return ApiResult(
            id=self.request.id,
            op=ApiOp.CMD.value,
            ok=ok,
            done=final,
            code=(job.code or job.status.value) if final else "accepted",
            detail=job.detail or "",
            devices=[outcome],
            counts={job.status.value: 1},
        )
