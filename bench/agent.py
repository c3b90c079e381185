"""The voice assistant on its offline defaults (pocketsphinx + espeak-ng + the fleet grammar):
end of a device's speech → first sound of the answer at a listening device (median, p95),
the word accuracy of what the assistant understood, and CPU per minute of meeting (the
whole process: broker, controller, two devices and the agent, so an upper bound).

    PYTHONPATH=$PWD .venv/bin/python bench/agent.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from brokers import amqtt_handle, unique_prefix
from running import controller, operator, sim_fleet

from broker.credentials import CredentialStore, Role
from fleet.agents.runner import agent_in_room
from fleet.agents.voice.brain import FleetBrain
from fleet.agents.voice.pipeline import VoiceAgent
from fleet.agents.voice.stt import PocketSphinxSTT
from fleet.agents.voice.tts import EspeakTTS
from fleet.device.speech import SpeakingDriver, words
from fleet.mqtt import BrokerUrl
from fleet.protocol.messages import ApiOp, ApiRequest

PHRASES = ["what room is this", "how many devices are online"]


async def main(rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    handle = amqtt_handle(CredentialStore(tmp / "credentials.json"), unique_prefix())
    await handle.start()
    tts = EspeakTTS()
    secrets = {d: handle.add_device(d) for d in ("dev-1", "dev-2")}
    latencies: list[float] = []
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
    finally:
        await handle.stop()
    if latencies:
        ordered = sorted(latencies)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        print(
            f"end of speech -> first answer sound: median {statistics.median(ordered):.2f}s, "
            f"p95 {p95:.2f}s over {len(ordered)} turns (target: median < 1.0s)"
        )
    print(f"word accuracy of the commands understood: {right}/{total} = {right / total:.0%}")
    print(f"CPU (whole process) per minute of meeting: {cpu / minutes:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    asyncio.run(main(parser.parse_args().rounds))
