"""The web console in a real browser: headless Debian Chromium driven by Playwright, with a
fake microphone playing a tone, against `fleet up`'s whole stack (embedded broker with
its WebSocket listener, controller, simulated devices with real audio, a local Janus when
installed). Everything runs in a network namespace of the module's own; one browser
serves the module."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import numpy as np
import pytest
import pytest_asyncio

from cli.stack import Stack, StackConfig, free_port, running_stack, stack_console
from fleet.agents.voice.stt import PocketSphinxSTT
from fleet.auth import CredentialStore
from fleet.client import FleetClient
from fleet.device.announce import ANNOUNCE_STREAM
from fleet.device.audio import AudioMeetingDriver
from fleet.device.tones import tone_for
from fleet.meetings import MeetingServer
from fleet.protocol.constants import CALL_ROOM_PREFIX
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    DeviceOutcome,
    MediaPath,
    RoomMedia,
)
from fleet.web.chromium import chromium_path, launch, tone_wav
from fleet.web.server import ConsoleConfig, WebConsole
from tests.announce.support import recognize
from tests.support import ROOT
from tests.support.netns import Netns, netns
from tests.support.running import wait_for

playwright_api = pytest.importorskip("playwright.async_api")

JSON = {"Content-Type": "application/json"}

pytestmark = [pytest.mark.timeout(240), pytest.mark.asyncio(loop_scope="module")]
DOCS = ROOT / "docs"
# The page's pictures in the docs are refreshed on request (FLEET_DOCS_SCREENSHOTS=1);
# otherwise they go to a temporary folder, so a test run leaves the checkout as it was.
SHOTS = DOCS if os.environ.get("FLEET_DOCS_SCREENSHOTS") == "1" else Path(tempfile.gettempdir())
BROWSER_HZ = 3000.0  # the fake microphone's tone: none of the devices' (400 Hz + 175 n)
DEVICES = 3
GROUP = "office"  # every device's group: a call button may call it
PHRASES = ["lunch is ready", "the door is open", "please go home", "stop the music"]
CREDS_KEY = "espfleet.console.credentials"


@dataclass
class Rig:
    stack: Stack
    console: WebConsole
    browser: Any  # playwright BrowserContext
    secret: str  # the operator's

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.stack.fleet.devices]

    @property
    def drivers(self) -> dict[str, AudioMeetingDriver]:
        return {d.id: d.driver for d in self.stack.fleet.devices}  # type: ignore[misc]

    @property
    def meetings(self) -> MeetingServer:
        return next(p for p in self.stack.controller.parts if isinstance(p, MeetingServer))

    def state(self, device_id: str) -> Any:
        rec = self.stack.controller.registry.devices.get(device_id)
        return rec.state if rec else None


@pytest.fixture(scope="module")
def space() -> Iterator[Netns]:
    if chromium_path() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with netns("web") as s, s.inside():
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(space: Netns, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    home = tmp_path_factory.mktemp("webhome")
    config = StackConfig(
        home=home,
        devices=DEVICES,
        port=free_port(),
        ws_port=free_port(),
        tele_interval_s=1.0,
        groups=(GROUP,),
    )
    wav = tone_wav(home / "mic.wav", BROWSER_HZ)
    async with (
        running_stack(config) as stack,
        stack_console(stack, "127.0.0.1", 0) as console,
        playwright_api.async_playwright() as pw,
    ):
        await stack.wait_ready()
        browser = await launch(pw, tmp_path_factory.mktemp("chromium"), wav)
        try:
            yield Rig(stack, console, browser, stack.operator_url.password or "")
        finally:
            await browser.close()


async def signed_in(rig: Rig, console: WebConsole | None = None) -> Any:
    page = await rig.browser.new_page()
    await page.goto((console or rig.console).url)
    await page.fill("#password", rig.secret)
    await page.click("#sign-in")
    try:
        await page.wait_for_selector("body[data-phase=live]", timeout=15000)
    except playwright_api.Error:
        text = await page.evaluate("document.body.innerText")
        raise AssertionError(f"the console never went live; it shows: {text[:600]}") from None
    return page


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    await wait_for(check, timeout=timeout, what=what)


async def page_until(page: Any, expr: str, what: str, timeout: float = 20.0) -> Any:
    """Poll a JavaScript expression in the page until it is truthy; its value. (Not
    wait_for_function: that evaluates strings with eval, which the console's CSP forbids.)"""
    try:
        async with asyncio.timeout(timeout):
            while not (value := await page.evaluate(expr)):  # noqa: ASYNC110 (no page event)
                await asyncio.sleep(0.1)
            return value
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}: {await page.evaluate(expr)}") from None


def participant_of(rig: Rig, pid: str) -> str:
    """The participant id `pid` has in its live session."""
    where = rig.meetings.roster.where(pid)
    assert where is not None, f"{pid} is in no session"
    return where[1]


async def operator_room(rig: Rig, room: str) -> None:
    """Rooms come from operators: a person's browser (a web user) meets in one, never
    makes it."""
    if rig.meetings.records.room(room) is None:
        async with FleetClient(rig.stack.operator_url, rig.stack.controller.topics) as op:
            assert (await op.request(ApiOp.ROOM_CREATE, ApiRequest(room=room))).ok


async def join_all(rig: Rig, page: Any, room: str) -> None:
    await operator_room(rig, room)
    await page.fill("#room", room)
    await page.click("#join-all")
    await until(
        lambda: all(
            (s := rig.state(i)) and s.meeting and s.meeting.room == room and s.meeting.session
            for i in rig.ids
        ),
        f"every device in {room}",
    )


async def hang_up(rig: Rig, page: Any) -> None:
    if await page.evaluate("!!window.fleetConsole.talk"):
        username = await page.evaluate("window.fleetConsole.creds.username")
        await page.click("#talk")
        await until(
            lambda: rig.meetings.roster.where(username) is None, "the browser left its session"
        )


async def test_console_shows_the_fleet_and_its_buttons_change_it(rig: Rig) -> None:
    page = await signed_in(rig)
    online = f"document.querySelectorAll('#devices tr.online').length == {DEVICES}"
    await page_until(page, online, "every device online in the table")
    assert await page.text_content("#fleet-summary") == f"{DEVICES} devices, {DEVICES} online"
    # One device, from its row.
    await operator_room(rig, "desk")
    await page.fill("#room", "desk")
    await page.click("tr[data-device=dev-2] button[data-action=join]")
    await until(
        lambda: (s := rig.state("dev-2")) and s.meeting and s.meeting.room == "desk",
        "dev-2 in desk",
    )
    await page.wait_for_selector("tr[data-device=dev-2] td.room:has-text('desk')")
    assert all(not (s := rig.state(i)) or not s.meeting for i in ("dev-1", "dev-3"))
    await page.click("tr[data-device=dev-2] button[data-action=mute]")
    await until(lambda: rig.state("dev-2").mic is False, "dev-2 muted")
    # The whole fleet.
    await join_all(rig, page, "standup")
    await page.click("#mute-all")
    await until(lambda: all(rig.state(i).mic is False for i in rig.ids), "every device muted")
    await page_until(
        page,
        f"document.querySelectorAll('#devices td.mic').length == {DEVICES} && "
        "[...document.querySelectorAll('#devices td.mic')].every(td => td.textContent == 'muted')",
        "every device muted in the table",
    )
    await page.click("#unmute-all")
    await until(lambda: all(rig.state(i).mic is True for i in rig.ids), "every device unmuted")
    # Rooms and sessions, from the controller.
    await page.click("#refresh-rooms")
    await page.wait_for_selector("#rooms td:has-text('standup')")
    await page.click("#rooms tr:has-text('standup') button[data-action=sessions]")
    await page.wait_for_selector("#sessions div:has-text('(live)')")
    await page.screenshot(path=str(SHOTS / "console-fleet.png"), type="png")
    await page.click("#leave-all")
    await until(lambda: all(not rig.state(i).meeting for i in rig.ids), "every device left")
    await page.close()


def rooms_row(room: str) -> str:
    """The page's rooms-table row of `room` as its cells' text, '' while it has none."""
    return (
        f"[...document.querySelectorAll('#rooms tbody tr')].map(tr => [...tr.children]"
        f".map(td => td.textContent)).find(cells => cells[0] == {json.dumps(room)})"
        "?.slice(0, 3).join('|') || ''"
    )


async def test_room_list_follows_the_fleet_without_refresh(rig: Rig) -> None:
    page = await signed_in(rig)
    online = f"document.querySelectorAll('#devices tr.online').length == {DEVICES}"
    await page_until(page, online, "every device online in the table")
    assert await page.evaluate(rooms_row("corner")) == ""
    await join_all(rig, page, "corner")
    session = rig.state("dev-1").meeting.session
    # Nobody presses "refresh": the list follows the devices' reports and the controller.
    await page_until(page, rooms_row("corner"), "corner in the rooms list")
    await page_until(
        page, f"{rooms_row('corner')}.endsWith('{session} ({DEVICES})')", "corner's live session"
    )
    await page.click("tr[data-device=dev-3] button[data-action=leave]")
    await until(lambda: not rig.state("dev-3").meeting, "dev-3 left")
    await page_until(
        page,
        "document.querySelector('tr[data-device=dev-1] td.room').textContent == 'corner (1 peer)'",
        "dev-1's row: one peer left",
    )
    await page_until(
        page, f"{rooms_row('corner')}.endsWith('{session} ({DEVICES - 1})')", "one member fewer"
    )
    await page.click("#leave-all")
    await until(lambda: all(not rig.state(i).meeting for i in rig.ids), "every device left")
    row = await page_until(
        page, f"{rooms_row('corner')}.endsWith('|—') && {rooms_row('corner')}", "no live session"
    )
    assert row.startswith("corner|")
    await page.close()


@dataclass
class Wire:
    """What a user's requests were and what became of them, as the broker delivers them:
    every request on a user's own request topic (`api/by/{user}/{op}`) as (op, its JSON),
    and the controller's final results on `api/result`, by request id."""

    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    results: dict[str, ApiResult] = field(default_factory=dict)

    async def final(self, op: str, n: int) -> ApiResult:
        """The final result of the `n`th request of `op` (from 0)."""

        def result() -> ApiResult | None:
            ids = [r["id"] for o, r in self.requests if o == op]
            return self.results.get(ids[n]) if len(ids) > n else None

        await until(lambda: result() is not None, f"the result of {op} #{n}", timeout=60)
        got = result()
        assert got is not None
        return got


@contextlib.asynccontextmanager
async def wire(rig: Rig) -> AsyncIterator[Wire]:
    """The requests and their results, read by an operator's client."""
    url = rig.stack.operator_url
    t = rig.stack.controller.topics
    seen = Wire()
    async with aiomqtt.Client(
        url.host,
        url.port,
        username=url.username,
        password=url.password,
        identifier=f"{url.username}-wire",
        protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:
        await client.subscribe(t.all_api_requests_by, qos=1)
        await client.subscribe(t.api_result, qos=1)

        async def read() -> None:
            async for m in client.messages:
                if m.topic.value == t.api_result:
                    result = ApiResult.model_validate_json(bytes(m.payload))  # type: ignore[arg-type]
                    if result.done and result.id:
                        seen.results[result.id] = result
                    continue
                seen.requests.append(
                    (m.topic.value.rsplit("/", 1)[1], json.loads(bytes(m.payload)))  # type: ignore[arg-type]
                )

        reader = asyncio.create_task(read())
        try:
            yield seen
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def sent(seen: Wire, op: str) -> list[dict[str, Any]]:
    """The requests of `op`, without their ids."""
    return [{k: v for k, v in r.items() if k != "id"} for o, r in seen.requests if o == op]


def outcomes(result: ApiResult) -> dict[str, DeviceOutcome]:
    return {d.device: d.outcome for d in result.devices}


async def test_the_announce_box_is_played_by_its_targets(rig: Rig) -> None:
    page = await signed_in(rig)
    online = f"document.querySelectorAll('#devices tr.online').length == {DEVICES}"
    await page_until(page, online, "every device online in the table")
    devices = {d.id: d for d in rig.stack.fleet.devices}
    stt = PocketSphinxSTT(reject_below=-1e9)

    def played(device: str, result: ApiResult) -> np.ndarray:
        playback = devices[device].announcer.by_ann(result.ann or "")
        assert playback is not None, f"{device} never played {result.ann}"
        assert playback.outcome == "played", playback.outcome
        ms = playback.played_frames * 20
        return rig.drivers[device].heard.samples(ANNOUNCE_STREAM, ms / 1000)

    async with wire(rig) as seen:
        # Every device (the box's default).
        await page.fill("#announce-text", "lunch is ready")
        await page.click("#announce")
        everyone = await seen.final("announce", 0)
        assert everyone.ok, everyone
        assert outcomes(everyone) == dict.fromkeys(rig.ids, DeviceOutcome.PLAYED)
        for device in rig.ids:
            heard = played(device, everyone)
            assert await recognize(stt, heard, PHRASES) == "lunch is ready", device
        # One device, urgent: that one plays it, no other.
        await page.fill("#announce-text", "stop the music")
        await page.select_option("#announce-target", "device:dev-2")
        await page.select_option("#announce-priority", "urgent")
        await page.click("#announce")
        one = await seen.final("announce", 1)
        assert one.ok, one
        assert outcomes(one) == {"dev-2": DeviceOutcome.PLAYED}
        assert await recognize(stt, played("dev-2", one), PHRASES) == "stop the music"
        for device in ("dev-1", "dev-3"):
            assert devices[device].announcer.by_ann(one.ann or "") is None, device
        assert sent(seen, "announce") == [
            {"text": "lunch is ready", "priority": "normal"},
            {"text": "stop the music", "priority": "urgent", "device": "dev-2"},
        ]
        await page.wait_for_selector("#log div.info:has-text('announce: ok')")
    await page.close()


def dnd_row(device: str) -> str:
    """`device`'s row as the page shows its do-not-disturb: its toggle (checked, disabled)
    and whether the id carries the badge."""
    row = f"document.querySelector('tr[data-device={device}]')"
    return (
        f"(tr => tr && (b => [b.checked, b.disabled, !!tr.querySelector('td.id span.dnd')])"
        f"(tr.querySelector('input[data-action=dnd]')))({row})"
    )


async def test_a_dnd_toggle_has_normal_announcements_pass_its_device_by(rig: Rig) -> None:
    page = await signed_in(rig)
    online = f"document.querySelectorAll('#devices tr.online').length == {DEVICES}"
    await page_until(page, online, "every device online in the table")
    devices = {d.id: d for d in rig.stack.fleet.devices}
    toggle = "tr[data-device=dev-2] input[data-action=dnd]"

    def dnd(device: str) -> bool:
        state = rig.state(device)
        return state is not None and state.dnd

    assert not any(dnd(i) for i in rig.ids)
    assert await page.evaluate(dnd_row("dev-2")) == [False, False, False]
    try:
        async with wire(rig) as seen:
            # On, from dev-2's row: the device reports it, and its row shows it.
            await page.check(toggle)
            on = await seen.final("dnd", 0)
            assert on.ok, on
            await until(lambda: dnd("dev-2"), "dev-2 reports do-not-disturb")
            assert [dnd(i) for i in rig.ids] == [False, True, False]
            await page_until(
                page,
                f"JSON.stringify({dnd_row('dev-2')}) == '[true,false,true]'",
                "dev-2's row: toggle on, badge",
            )
            # A normal announcement to every device passes dev-2 by; the others play it.
            await page.fill("#announce-text", "please go home")
            await page.select_option("#announce-target", "all")
            await page.select_option("#announce-priority", "normal")
            await page.click("#announce")
            quiet = await seen.final("announce", 0)
            assert quiet.ok, quiet
            assert outcomes(quiet) == {
                "dev-1": DeviceOutcome.PLAYED,
                "dev-2": DeviceOutcome.SKIPPED,
                "dev-3": DeviceOutcome.PLAYED,
            }
            for device in ("dev-1", "dev-3"):
                playback = devices[device].announcer.by_ann(quiet.ann or "")
                assert playback is not None, device
                assert playback.outcome == "played", (device, playback.outcome)
            assert devices["dev-2"].announcer.by_ann(quiet.ann or "") is None
            # Off again: cleared on the device and in its row, and dev-2 plays a normal one.
            await page.uncheck(toggle)
            off = await seen.final("dnd", 1)
            assert off.ok, off
            await until(lambda: not dnd("dev-2"), "dev-2 reports do-not-disturb off")
            await page_until(
                page,
                f"JSON.stringify({dnd_row('dev-2')}) == '[false,false,false]'",
                "dev-2's row: toggle off, no badge",
            )
            await page.select_option("#announce-target", "device:dev-2")
            await page.click("#announce")
            again = await seen.final("announce", 1)
            assert outcomes(again) == {"dev-2": DeviceOutcome.PLAYED}, again
            assert sent(seen, "dnd") == [
                {"device": "dev-2", "on": True},
                {"device": "dev-2", "on": False},
            ]
            await page.wait_for_selector("#log div.info:has-text('dnd: ok')")
    finally:
        if dnd("dev-2"):  # the module's other tests call and announce to every device
            async with FleetClient(rig.stack.operator_url, rig.stack.controller.topics) as op:
                await op.request(ApiOp.DND, ApiRequest(device="dev-2", on=False))
    await page.close()


async def test_a_call_button_puts_two_devices_in_a_call_and_hang_up_ends_it(rig: Rig) -> None:
    page = await signed_in(rig)
    online = f"document.querySelectorAll('#devices tr.online').length == {DEVICES}"
    await page_until(page, online, "every device online in the table")
    tones = {i: tone_for(n) for n, i in enumerate(rig.ids)}

    def room(device: str) -> str | None:
        state = rig.state(device)
        return state.meeting.room if state is not None and state.meeting is not None else None

    def hears(listener: str, speaker: str) -> bool:
        driver = rig.drivers[listener]
        return any(
            pid == speaker and driver.hears_tone(participant, tones[speaker])
            for participant, pid in driver.peer_pids().items()
        )

    row = "tr[data-device=dev-1]"
    # Whom it may call: the other devices and the groups, never every device (refused).
    targets = await page.evaluate(
        f"[...document.querySelectorAll('{row} select[data-action=call-target] option')]"
        ".map(o => o.value)"
    )
    assert targets == ["dev-2", "dev-3", f"group:{GROUP}"]
    async with wire(rig) as seen:
        # dev-1 calls dev-3 from its row: both in the call's room, hearing each other.
        await page.select_option(f"{row} select[data-action=call-target]", "dev-3")
        await page.click(f"{row} button[data-action=call]")
        call = await seen.final("call", 0)
        assert call.ok, call
        assert call.call is not None
        assert call.call.startswith(CALL_ROOM_PREFIX)
        await until(lambda: room("dev-1") == room("dev-3") == call.call, "dev-1 and dev-3 in it")
        await until(lambda: hears("dev-1", "dev-3") and hears("dev-3", "dev-1"), "two-way audio")
        assert room("dev-2") is None
        await page_until(
            page,
            f"document.querySelector('{row} td.room').textContent.startsWith('{call.call}')",
            "dev-1's row in the call",
        )
        # Hang up, from the callee's row: both back where they were (in no meeting).
        await page.click("tr[data-device=dev-3] button[data-action=hangup]")
        hung = await seen.final("hangup", 0)
        assert (hung.ok, hung.call) == (True, call.call), hung
        await until(lambda: room("dev-1") is None and room("dev-3") is None, "the call over")

        # A group: dev-1 calls the office (every other device), dev-2 hangs up.
        await page.select_option(f"{row} select[data-action=call-target]", f"group:{GROUP}")
        await page.click(f"{row} button[data-action=call]")
        group_call = await seen.final("call", 1)
        assert group_call.ok, group_call
        assert group_call.group == GROUP
        await until(
            lambda: all(room(d) == group_call.call for d in rig.ids), "every device in the call"
        )
        await page.click("tr[data-device=dev-2] button[data-action=hangup]")
        hung = await seen.final("hangup", 1)
        assert (hung.ok, hung.call) == (True, group_call.call), hung
        await until(lambda: all(room(d) is None for d in rig.ids), "the group call over")

        assert sent(seen, "call") == [
            {"device": "dev-1", "to": "dev-3"},
            {"device": "dev-1", "group": GROUP},
        ]
        assert sent(seen, "hangup") == [{"device": "dev-3"}, {"device": "dev-2"}]
        # Each on the person's own request topic, answered by the controller.
        username = await page.evaluate("window.fleetConsole.creds.username")
        ids = [r["id"] for o, r in seen.requests if o in ("call", "hangup")]
        assert all(i.startswith(f"{username}-") for i in ids)
        await page_until(
            page,
            f"{json.dumps(ids)}.every(id => !window.fleetConsole.pending.has(id))",
            "the page has a final result for each",
        )
    await page.close()


async def test_talk_from_the_browser_with_trickle_ice_and_push_to_talk(rig: Rig) -> None:
    page = await signed_in(rig)
    await join_all(rig, page, "talk")
    tones = {i: tone_for(n) for n, i in enumerate(rig.ids)}
    await page.click("#talk")
    await page_until(
        page,
        f"(h => Object.keys(h).length == {DEVICES} && Object.values(h).every(p => "
        "p.state == 'connected'))(window.fleetConsole.talk.hearing())",
        "a connection to every device",
    )
    # Trickle ICE: the offers left before gathering, without candidates, and connected.
    offers = await page.evaluate("window.fleetConsole.talk.sentOffers")
    assert len(offers) == DEVICES, offers
    assert all(o["candidates"] == 0 for o in offers), offers
    # The browser hears each device's tone, from that device's peer connection.
    by_participant = {participant_of(rig, i): tones[i] for i in rig.ids}
    freqs = json.dumps(sorted(by_participant.values()))
    heard = await page_until(
        page,
        f"(h => Object.keys(h).length == {DEVICES} && Object.entries(h).every(([p, f]) => "
        f"f.length == 1) && h)(window.fleetConsole.talk.heardTones({freqs}))",
        "each device's tone in the browser",
    )
    assert {p: f[0] for p, f in heard.items()} == by_participant
    # Each device hears the browser, and counts its packets in its per-peer stats.
    username = await page.evaluate("window.fleetConsole.creds.username")
    me = participant_of(rig, username)
    await until(
        lambda: all(d.hears_tone(me, BROWSER_HZ) for d in rig.drivers.values()),
        "every device hears the browser",
    )
    for drv in rig.drivers.values():
        stats = {s.peer: s for s in await drv.mesh.stats()}
        assert stats[me].packets_received > 0, stats
    # The fleet view shows what each device receives (its telemetry's per-peer level).
    await page_until(
        page,
        "[...document.querySelectorAll('#devices meter')].every(m => m.value > 0.01)",
        "a received level on every device's row",
    )
    await page.screenshot(path=str(SHOTS / "console-talk.png"), type="png")
    # A device that joins after the browser offers to it (vanilla, from aiortc); the
    # browser answers at once and trickles its candidates to the device.
    await page.click("tr[data-device=dev-1] button[data-action=leave]")
    await until(lambda: not rig.state("dev-1").meeting, "dev-1 left")
    await page.click("tr[data-device=dev-1] button[data-action=join]")
    await until(lambda: rig.meetings.roster.where("dev-1") is not None, "dev-1 back in the session")
    again = participant_of(rig, "dev-1")
    await page_until(
        page,
        f"(h => h['{again}'] && h['{again}'].length == 1)"
        f"(window.fleetConsole.talk.heardTones([{tones['dev-1']}]))",
        "dev-1's tone in the browser again",
    )
    await until(lambda: rig.drivers["dev-1"].hears_tone(me, BROWSER_HZ), "dev-1 hears the browser")
    await hang_up(rig, page)

    # Push-to-talk: the mic is live only while the button is held.
    await page.check("#ptt-only")
    await page.click("#talk")
    await page_until(
        page,
        f"(h => Object.keys(h).length == {DEVICES} && Object.values(h).every(p => "
        "p.state == 'connected'))(window.fleetConsole.talk.hearing())",
        "a connection to every device (push-to-talk)",
    )
    me = participant_of(rig, username)
    # Connected and sending (silence): the devices' last second holds no browser tone.
    await until(
        lambda: all(d.heard.samples(me, 1.0).size >= 40000 for d in rig.drivers.values()),
        "a second of (silent) audio from the browser at every device",
    )
    assert not any(d.hears_tone(me, BROWSER_HZ) for d in rig.drivers.values())
    box = await page.locator("#ptt").bounding_box()
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.down()
    await until(
        lambda: all(d.hears_tone(me, BROWSER_HZ, 0.5) for d in rig.drivers.values()),
        "the announcement at every device",
    )
    await page.mouse.up()
    await until(
        lambda: not any(d.hears_tone(me, BROWSER_HZ, 0.5) for d in rig.drivers.values()),
        "silence once the button is released",
    )
    await hang_up(rig, page)
    await page.close()


async def test_talk_in_a_mixed_room_through_the_mixer(rig: Rig) -> None:
    if rig.stack.mixer_url is None:
        pytest.skip("Janus is not installed (apt-get install janus)")
    async with FleetClient(rig.stack.operator_url, rig.stack.controller.topics) as op:
        made = await op.request(ApiOp.ROOM_CREATE, ApiRequest(room="mix", media=RoomMedia.MIXED))
        assert made.ok, made
    page = await signed_in(rig)
    await join_all(rig, page, "mix")
    assert rig.meetings.live["mix"].media is MediaPath.MIXED
    await page.click("#talk")
    tones = sorted(tone_for(n) for n in range(DEVICES))
    heard = await page_until(
        page,
        f"(h => h.mixer && h.mixer.length == {DEVICES} && h)"
        f"(window.fleetConsole.talk.heardTones({json.dumps(tones)}))",
        "the mix of every device in the browser",
        timeout=30,
    )
    assert heard == {"mixer": tones}
    offers = await page.evaluate("window.fleetConsole.talk.sentOffers")
    assert offers == [{"to": "mixer", "candidates": 0}]  # trickled to Janus
    await until(
        lambda: all(d.hears_tone("mixer", BROWSER_HZ) for d in rig.drivers.values()),
        "every device hears the browser in the mix",
        timeout=30,
    )
    await hang_up(rig, page)
    await page.click("#leave-all")
    await until(lambda: all(not rig.state(i).meeting for i in rig.ids), "every device left")
    await page.close()


async def test_sign_in_is_refused_without_the_operator_secret_and_credentials_expire(
    rig: Rig,
) -> None:
    stack = rig.stack
    # The fleet's users (with Mosquitto the controller's credentials are the broker, which
    # rewrites its files from this same store).
    store = CredentialStore(stack.config.home / "credentials.json")
    before = {c.username for c in store.list()}
    # Bad sign-ins: a clear error each, and nothing minted.
    async with aiohttp.ClientSession() as http:
        login = rig.console.url + "login"
        for body, status in (
            (b"not json", 400),
            (json.dumps({"password": ""}).encode(), 400),
            (json.dumps({"password": "x" * 5000}).encode(), 413),
            (json.dumps({"password": "wrong"}).encode(), 401),
        ):
            async with http.post(login, data=body, headers=JSON) as reply:
                assert reply.status == status, (body[:20], await reply.text())
                assert "error" in await reply.json()
    assert {c.username for c in store.list()} == before
    page = await rig.browser.new_page()
    await page.goto(rig.console.url)
    await page.fill("#password", "wrong")
    await page.click("#sign-in")
    await page.wait_for_selector("#login-error:has-text('wrong operator secret')")
    await page.close()

    # A console whose credentials last 2 s: the page works, then is refused.
    short = ConsoleConfig(
        broker=rig.console.config.broker,
        topics=rig.console.config.topics,
        ws_port=rig.console.config.ws_port,
        operator=rig.console.config.operator,
        ttl_s=2.0,
    )
    async with WebConsole(short, "127.0.0.1", 0) as console:
        page = await signed_in(rig, console)
        creds = await page.evaluate(f"JSON.parse(sessionStorage.getItem('{CREDS_KEY}'))")
        rows = f"document.querySelectorAll('#devices tr.online').length == {DEVICES}"
        await page_until(page, rows, "the fleet in the table")
        await asyncio.sleep(max(0.0, creds["until"] - time.time()) + 0.2)
        # The broker refuses them now, to the page and to anyone else holding them.
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1",
                stack.broker.port,
                identifier=creds["username"],
                username=creds["username"],
                password=creds["password"],
            ):
                pass
        # The open page is closed by the broker at the expiry and says so.
        await page.wait_for_selector("body[data-phase=login]", timeout=15000)
        assert "credentials expired" in (await page.text_content("#login-error") or "")
        # A page that loads them again is refused.
        stored = json.dumps(json.dumps(creds))
        await page.evaluate(f"sessionStorage.setItem('{CREDS_KEY}', {stored})")
        await page.reload()
        await page.wait_for_selector("body[data-phase=login]", timeout=15000)
        assert "expired" in (await page.text_content("#login-error") or "")
        await page.close()
    # A fresh sign-in sweeps the expired user from the broker's store.
    page = await signed_in(rig)
    users = {c.username for c in store.list()}
    assert creds["username"] not in users
    await page.close()
