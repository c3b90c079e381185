"""The voice assistant in a mixed room: its one peer is a real Janus AudioBridge (the
stack's own local Janus, in a network namespace of the module's), which mixes dev-1's
spoken command for it and its spoken answer for dev-2. The same code as
`fleet demo --agent assistant` (cli.demo.assistant_demo), on a room created mixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.demo import assistant_demo
from cli.stack import StackConfig, free_port, running_stack
from fleet.agents.voice.tts import EspeakTTS
from fleet.client import FleetClient
from fleet.device.speech import SpeakingDriver
from fleet.mixer.process import require_janus
from fleet.protocol.messages import ApiOp, ApiRequest, MediaPath, RoomMedia
from tests.support.netns import Netns

pytestmark = pytest.mark.timeout(180)


async def test_the_assistant_understands_and_answers_through_the_mixer(
    tmp_path: Path, mixed_net: Netns
) -> None:
    require_janus()
    tts = EspeakTTS()
    config = StackConfig(
        home=tmp_path / "home",
        devices=2,
        port=free_port(),
        tele_interval_s=60,
        driver_factory=lambda _: SpeakingDriver(tts),
    )
    async with running_stack(config) as stack:
        await stack.wait_ready()
        assert stack.mixer_url is not None
        async with FleetClient(stack.operator_url, stack.controller.topics) as op:
            room = ApiRequest(room="standup", media=RoomMedia.MIXED, cap=3)
            assert (await op.request(ApiOp.ROOM_CREATE, room)).ok
            assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))).ok
            lines: list[str] = []
            check = await assistant_demo(stack, "standup", lines.append)
            history = (await op.request(ApiOp.SESSIONS, ApiRequest(room="standup"))).sessions[0]
    assert history.media is MediaPath.MIXED, history
    assert "agent-assistant" in {p.pid for p in history.participants}
    # Both are the same command in the grammar (the mix at 16 kHz now and then lends the
    # recognizer a "the").
    assert check.understood in ("mute dev two", "mute the dev two"), (check, lines)
    assert check.changed, check
    assert check.answer == "dev two is muted."
    assert check.heard == "dev two is muted", check
    assert check.ok
