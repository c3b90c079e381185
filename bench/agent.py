"""The voice assistant on its offline defaults (pocketsphinx + espeak-ng + the fleet grammar):
end of a device's speech → first sound of the answer at a listening device (median, p95),
the word accuracy of what the assistant understood, and CPU per minute of meeting (the
whole process: broker, controller, two devices and the agent, so an upper bound).

    .venv/bin/python -m bench.agent [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.agents.runner import agent_in_room
from fleet.agents.voice.brain import FleetBrain
from fleet.agents.voice.pipeline import VoiceAgent
from fleet.agents.voice.stt import PocketSphinxSTT
from fleet.agents.voice.tts import EspeakTTS
from fleet.auth import CredentialStore, Role
from fleet.device.speech import SpeakingDriver, words
from fleet.mqtt import BrokerUrl
from fleet.protocol.messages import ApiOp, ApiRequest
from tests.support.brokers import amqtt_handle, unique_prefix
from tests.support.running import controller, operator, sim_fleet

PHRASES = ["what room is this", "how many devices are online", "mute dev two", "unmute dev two"]
LONG_ANSWER = "what can you do"
TALK_OVER = "hold on a moment please"


def figures(what: str, values: list[float], target: str) -> str:
    if not values:
        return f"{what}: no figures"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"{what}: median {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms "
        f"over {len(ordered)} (target: {target})"
    )


@dataclass(frozen=True)
class BargeIn:
    """One talk-over, in seconds from the interrupter's first sound leaving its mouth."""

    cut: float  # the agent cut its output: silence is sent from then on (a listener hears
    # the cut one network path later; bench/media_pair.py measures that path)
    detect: float  # inside the agent: the talk-over's first voiced frame → the cut


async def barge_in(
    agent: VoiceAgent, pid: str, talker: SpeakingDriver, listener: SpeakingDriver
) -> BargeIn | None:
    """One talk-over of a long answer; None when the answer or the cut never came."""
    answer_peer = listener.peer_of(pid)
    assert answer_peer is not None
    cuts = len(agent.interruptions)
    asked = await talker.say(LONG_ANSWER)
    try:
        async with asyncio.timeout(15):
            while not listener.loudness.loud(answer_peer, asked.end):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        return None
    await asyncio.sleep(1.0)
    # Talk over a word, not a pause between sentences.
    async with asyncio.timeout(5):
        while not listener.loudness.loud(answer_peer, time.monotonic() - 0.03):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    spoken = await talker.say(TALK_OVER)
    await asyncio.sleep(max(0.0, spoken.end - time.monotonic()) + 1.0)
    if len(agent.interruptions) <= cuts:
        return None
    cut = agent.interruptions[-1]
    return BargeIn(cut.stopped - spoken.start, cut.stopped - cut.heard)


async def main(rounds: int, barge_ins: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    handle = amqtt_handle(CredentialStore(tmp / "credentials.json"), unique_prefix())
    await handle.start()
    tts = EspeakTTS()
    secrets = {d: handle.add_device(d) for d in ("dev-1", "dev-2")}
    latencies: list[float] = []
    barge_ins_seen: list[BargeIn] = []
    right = total = 0
    try:
        async with (
            controller(handle, tmp / "ctl.db"),
            sim_fleet(handle, secrets, driver_factory=lambda _: SpeakingDriver(tts)) as fleet,
            operator(handle) as op,
        ):
            assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="bench"))).ok
            pid = "agent-bench"
            url = BrokerUrl.parse(handle.url(pid, handle.add_user(pid, Role.AGENT)))
            agent = VoiceAgent(PocketSphinxSTT(), tts, FleetBrain)
            talker, listener = fleet["dev-1"].driver, fleet["dev-2"].driver
            assert isinstance(talker, SpeakingDriver)
            assert isinstance(listener, SpeakingDriver)
            async with agent_in_room(url, pid, "bench", agent, handle.topics) as me:
                assert me.mesh is not None
                await me.mesh.wait_connected(timeout=20)
                await listener.mesh.wait_connected(timeout=20)
                await asyncio.sleep(2.0)
                cpu0, wall0 = time.process_time(), time.monotonic()
                ears = PocketSphinxSTT(reject_below=-1e9)
                for n in range(rounds):
                    text = PHRASES[n % len(PHRASES)]
                    turns = len(agent.turns)
                    spoken = await talker.say(text)
                    try:
                        heard = await listener.hear_answer(pid, spoken.end, ears, ["x"], 15)
                        latencies.append(heard.start - spoken.end)
                    except TimeoutError:
                        print(f"round {n}: no answer heard")
                    got = words(agent.turns[-1].text).split() if len(agent.turns) > turns else []
                    want = text.split()
                    total += len(want)
                    right += sum(1 for a, b in zip(got, want, strict=False) if a == b)
                minutes = (time.monotonic() - wall0) / 60
                cpu = time.process_time() - cpu0
                for n in range(barge_ins):
                    measured = await barge_in(agent, pid, talker, listener)
                    if measured is None:
                        print(f"barge-in {n}: the answer did not start or was not cut off")
                    else:
                        barge_ins_seen.append(measured)
    finally:
        await handle.stop()
    print(figures("end of speech -> first answer sound", latencies, "median < 1000 ms"))
    print(f"word accuracy of the commands understood: {right}/{total} = {right / total:.0%}")
    print(f"CPU (whole process) per minute of meeting: {cpu / minutes:.1f} s")
    seen = barge_ins_seen
    print(
        figures(
            "barge-in: talk-over leaves the mouth -> answer cut", [b.cut for b in seen], "< 200 ms"
        )
    )
    print(figures("  inside the agent: talk-over heard -> cut", [b.detect for b in seen], "-"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--barge-ins", type=int, default=6)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.barge_ins))
