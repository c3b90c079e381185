"""Run one agent in a room: its own MQTT link, the meeting protocol, the media mesh."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from fleet.agents import Agent, AgentContext, EchoAgent, PlayerAgent, RecorderAgent, ToneAgent
from fleet.errors import ConfigError
from fleet.media.mesh import MediaMesh
from fleet.meetings.participant import LocalParticipant, participant_link
from fleet.mqtt import BrokerUrl
from fleet.protocol import Topics

log = logging.getLogger("fleet.agents")

MODES = ("echo", "tone", "play", "record", "assistant", "transcribe")


def build_agent(
    mode: str, file: Path | None = None, directory: Path | None = None, freq_hz: float = 1000.0
) -> Agent:
    if mode == "echo":
        return EchoAgent()
    if mode == "tone":
        return ToneAgent(freq_hz)
    if mode == "play":
        if file is None:
            raise ConfigError("--mode play needs a WAV file")
        return PlayerAgent(file)
    if mode == "record":
        if directory is None:
            raise ConfigError("--mode record needs a directory")
        return RecorderAgent(directory)
    if mode in ("assistant", "transcribe"):
        from fleet.agents.voice.pipeline import TranscriberAgent, VoiceAgent
        from fleet.agents.voice.settings import VoiceSettings

        voice = VoiceSettings()
        if mode == "transcribe":
            return TranscriberAgent(voice.build_stt())
        return VoiceAgent(voice.build_stt(), voice.build_tts(), voice.build_brain)
    raise ConfigError(f"unknown agent mode {mode!r}: choose {', '.join(MODES)}")


def load_plugin(spec: str) -> Agent:
    """`module:Class` -> an instance of that Agent subclass (made with no arguments)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"plugin {spec!r}: expected module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"plugin {spec!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ConfigError(f"plugin {spec!r} is not a fleet.agents.Agent subclass")
    return cls()


@contextlib.asynccontextmanager
async def agent_in_room(
    url: BrokerUrl,
    pid: str,
    room: str,
    agent: Agent,
    topics: Topics | None = None,
    ice_servers: tuple[str, ...] = (),
) -> AsyncIterator[LocalParticipant]:
    """Join `room` as `pid` with `agent` as its voice and ears; leave on exit.

    The link outlives a broker restart: the agent reconnects and joins again. What it does
    (joining, its peers coming and going, leaving) is logged on "fleet.agents" at INFO.
    """
    topics = topics or Topics()
    config = replace(agent.media, ice_servers=ice_servers or agent.media.ice_servers)
    mesh = MediaMesh(config, agent.track_for, agent)
    seen = PeerReport(pid)
    async with participant_link(
        url, pid, topics, mesh, config.capabilities(), stay=True, on_change=seen
    ) as participant:
        seen.participant = participant

        def name_of(peer: str) -> str:
            info = participant.peers.get(peer)
            return f"{peer}-{info.pid}" if info else peer

        agent.name_of = name_of
        await participant.join(room)
        await agent.start(AgentContext(url, topics, pid, participant))
        try:
            yield participant
        finally:
            await agent.stop()
            log.info("agent %s leaving %s", pid, participant.room or room)


class PeerReport:
    """Logs what changed in the participant's meeting since the last call."""

    def __init__(self, pid: str) -> None:
        self.pid = pid
        self.participant: LocalParticipant | None = None
        self.session: str | None = None
        self.peers: dict[str, str] = {}

    def __call__(self) -> None:
        participant = self.participant
        if participant is None:
            return
        if participant.session != self.session:
            if participant.session is not None:
                log.info(
                    "agent %s joined %s as %s (session %s)",
                    self.pid,
                    participant.room,
                    participant.participant,
                    participant.session,
                )
            elif self.session is not None:
                log.info("agent %s is out of session %s", self.pid, self.session)
            self.session = participant.session
        now = {p: info.pid for p, info in participant.peers.items()}
        for peer in now.keys() - self.peers.keys():
            log.info("peer %s (%s) is here", peer, now[peer])
        for peer in self.peers.keys() - now.keys():
            log.info("peer %s (%s) left", peer, self.peers[peer])
        self.peers = now


async def run_agent(
    url: BrokerUrl,
    pid: str,
    room: str,
    agent: Agent,
    topics: Topics | None = None,
    duration_s: float | None = None,
    ice_servers: tuple[str, ...] = (),
) -> None:
    """Join and stay until cancelled or `duration_s` has passed."""
    async with agent_in_room(url, pid, room, agent, topics, ice_servers):
        if duration_s is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration_s)
