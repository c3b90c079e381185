"""What the demo shows: who hears whom in a meeting of simulated devices, by FFT."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.table import Table

from cli.stack import Stack
from fleet.device.audio import AudioMeetingDriver, DeviceHearing
from fleet.device.sim import SimFleet
from fleet.device.workers import SimWorkers
from fleet.meetings import DEFAULT_MESH_CAP
from fleet.protocol.messages import ApiRequest, RoomMedia

POLL_S = 0.1
COMPACT_ABOVE = 5  # devices heard: beyond, the table counts them instead of naming them


@dataclass
class Hearing:
    tones: dict[str, float]  # device -> the tone it sends
    heard: dict[str, set[str]] = field(default_factory=dict)  # device -> devices it hears
    levels: dict[str, dict[str, float]] = field(default_factory=dict)
    complete: bool = False
    at: float = 0.0  # time.monotonic() when everyone heard everyone

    def missing(self) -> dict[str, set[str]]:
        everyone = set(self.tones)
        return {
            d: (everyone - {d}) - self.heard.get(d, set())
            for d in self.tones
            if (everyone - {d}) - self.heard.get(d, set())
        }

    def hears_itself(self) -> list[str]:
        return [d for d, heard in self.heard.items() if d in heard]


def min_share(devices: int) -> float:
    """How much of a stream's power a tone needs to count as heard: a mesh peer's stream is
    one tone, a mix of N-1 tones gives each about 1/(N-1)."""
    return min(0.05, 0.25 / max(1, devices - 1))


def listen(fleet: SimFleet) -> Hearing:
    """Who each audio device hears now, over the last second of every stream it receives."""
    drivers = {d.id: d.driver for d in fleet.devices if isinstance(d.driver, AudioMeetingDriver)}
    tones = {i: drv.profile.tone_hz for i, drv in drivers.items() if drv.profile.tone_hz}
    share = min_share(len(tones))
    return _hearing(tones, {i: drv.hearing(tones, share) for i, drv in drivers.items()})


async def listen_workers(workers: SimWorkers) -> Hearing:
    """`listen` for devices in worker processes."""
    tones = workers.tones
    return _hearing(tones, await workers.hearing(min_share(len(tones))))


def _hearing(tones: dict[str, float], devices: dict[str, DeviceHearing]) -> Hearing:
    hearing = Hearing(tones=tones)
    for device_id, got in devices.items():
        hearing.heard[device_id] = got.heard
        hearing.levels[device_id] = got.levels
    return hearing


async def wait_until_everyone_hears(fleet: SimFleet | SimWorkers, timeout_s: float) -> Hearing:
    """Poll until every device hears every other one's tone (and none its own)."""
    deadline = time.monotonic() + timeout_s
    while True:
        hearing = listen(fleet) if isinstance(fleet, SimFleet) else await listen_workers(fleet)
        if not hearing.missing() and not hearing.hears_itself():
            hearing.complete = True
            hearing.at = time.monotonic()
            return hearing
        if time.monotonic() >= deadline:
            return hearing
        await asyncio.sleep(POLL_S)


def hearing_table(hearing: Hearing) -> Table:
    table = Table(title="who hears whom (FFT of each peer's last second)")
    for column in ("device", "sends", "hears", "levels", "missing"):
        table.add_column(column)
    missing = hearing.missing()
    others = len(hearing.tones) - 1
    for device_id, tone in sorted(hearing.tones.items()):
        heard = sorted(hearing.heard.get(device_id, set()))
        levels = hearing.levels.get(device_id, {})
        if others > COMPACT_ABOVE:
            itself = " and itself" if device_id in heard else ""
            hears = f"{len(set(heard) - {device_id})} of the other {others}{itself}"
        else:
            hears = ", ".join(f"{d} ({hearing.tones[d]:.0f} Hz)" for d in heard)
        table.add_row(
            device_id,
            f"{tone:.0f} Hz",
            hears,
            ", ".join(f"{pid} {lvl:.2f}" for pid, lvl in sorted(levels.items())),
            "[red]" + ", ".join(sorted(missing[device_id])) + "[/]" if device_id in missing else "",
        )
    return table


# --- a demo past the mesh cap: a mixed room ---------------------------------------------------


def needs_mixer(devices: int) -> bool:
    """A demo of more devices than a mesh holds meets in a mixed room."""
    return devices > DEFAULT_MESH_CAP


def demo_room(room: str, devices: int, agents: int = 0) -> ApiRequest:
    """The room the demo creates: a mixed one past the mesh cap (auto would start a mesh
    and move every member to the mixer a moment later), with seats for its agents."""
    media = RoomMedia.MIXED if needs_mixer(devices + agents) else RoomMedia.AUTO
    return ApiRequest(room=room, media=media, cap=max(devices + agents, 2))


# --- fleet demo --agent assistant ---------------------------------------------------------

ASSISTANT_PID = "agent-assistant"


@dataclass
class AssistantCheck:
    """One spoken command: what changed in the fleet and what was heard back."""

    command: str
    understood: str = ""
    answer: str = ""
    heard: str = ""
    changed: bool = False
    latency_s: float | None = None  # end of the command's speech → first sound of the answer

    @property
    def ok(self) -> bool:
        from fleet.device.speech import words

        return self.changed and bool(self.answer) and self.heard == words(self.answer)


async def assistant_demo(stack: Stack, room: str, say: Callable[[str], None]) -> AssistantCheck:
    """dev-1 says "mute dev two" into its microphone; the assistant (offline voice pipeline,
    an agent broker user of its own) must mute dev-2 through the API and answer by voice,
    and dev-2 must hear the answer (recognized back by pocketsphinx)."""
    from fleet.agents.runner import agent_in_room
    from fleet.agents.voice.brain import FleetBrain
    from fleet.agents.voice.pipeline import CANNOT, VoiceAgent
    from fleet.agents.voice.stt import PocketSphinxSTT
    from fleet.agents.voice.tts import EspeakTTS
    from fleet.auth import Role
    from fleet.device.speech import SpeakingDriver, voice_peer, words

    check = AssistantCheck("mute dev two")
    url = stack.add_user(ASSISTANT_PID, Role.AGENT)
    # Both recognizers load their model now: a load holds the interpreter for about half a
    # second, and during a meeting that stall drops the audio every device in this process
    # is sending (the first word of the command, once).
    agent = VoiceAgent(PocketSphinxSTT(), EspeakTTS(), FleetBrain)
    ears = PocketSphinxSTT(reject_below=-1e9)
    talker, listener = (stack.fleet[d].driver for d in ("dev-1", "dev-2"))
    assert isinstance(talker, SpeakingDriver)
    assert isinstance(listener, SpeakingDriver)
    async with agent_in_room(url, ASSISTANT_PID, room, agent, stack.controller.topics) as me:
        # dev-1's own stream in a mesh, the mixer's in a mixed room.
        def talker_peer() -> str:
            return voice_peer(me, "dev-1") or ""

        await _until(lambda: bool(talker_peer() and listener.peer_of(ASSISTANT_PID)), 15)
        assert me.mesh is not None
        await me.mesh.wait_connected(timeout=20)
        await listener.mesh.wait_connected(timeout=20)
        await talker.mesh.wait_connected(timeout=20)
        # Speak once the talker's audio reaches the assistant: a new connection's first
        # fraction of a second is lost while its jitter buffer fills.
        await _until(lambda: agent.hears_from(talker_peer()), 15)
        await asyncio.sleep(0.5)
        names = ", ".join(agent.actions.targets()) if agent.actions else "none"
        say(f"assistant {ASSISTANT_PID} is in {room}, knows {names}; dev-1 says: {check.command!r}")
        spoken = await talker.say(check.command)
        expected = [words(a) for a in ("dev two is muted", CANNOT, "that did not work")]
        try:
            heard = await listener.hear_answer(ASSISTANT_PID, spoken.end, ears, expected)
        except TimeoutError:
            say("dev-2 heard no answer")
        else:
            check.heard, check.latency_s = heard.text, heard.start - spoken.end
        check.understood = agent.turns[-1].text if agent.turns else ""
        check.answer = agent.said[-1].text if agent.said else ""
        rec = stack.controller.registry.devices.get("dev-2")
        check.changed = bool(rec and rec.state and rec.state.mic is False)
    return check


async def _until(predicate: Callable[[], bool], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - state spread over objects with no events
            await asyncio.sleep(POLL_S)


def assistant_table(check: AssistantCheck) -> Table:
    table = Table(title="the assistant, spoken to by dev-1")
    for column in ("said", "understood", "dev-2 muted", "answer", "dev-2 heard", "latency"):
        table.add_column(column)
    latency = f"{check.latency_s:.2f}s" if check.latency_s is not None else "-"
    table.add_row(
        check.command,
        check.understood,
        "yes" if check.changed else "[red]no[/]",
        check.answer,
        check.heard if check.heard else "[red]nothing[/]",
        latency,
    )
    return table
