"""Meetings from the command line: demo, rooms, sessions, say, agents, and a device process
that dies mid-call. Every `fleet` here is a subprocess, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from fleet.device.audio import AudioMeetingDriver, audio_drivers, tone_for
from fleet.media.analysis import hears
from fleet.media.sources import load_audio
from fleet.protocol.messages import ApiOp, ApiRequest
from tests.support import ROOT
from tests.support.brokers import BrokerHandle
from tests.support.cli import fleet
from tests.support.running import (
    controller,
    operator,
    operator_url,
    register_devices,
    sim_fleet,
    wait_for,
)


async def test_demo_meets_with_real_audio_and_exits_0(tmp_path: Path) -> None:
    code, out, err = await fleet("demo", home=tmp_path, timeout=90)
    assert code == 0, (out, err)
    assert "every device hears every other" in out
    assert "demo passed" in out
    assert "ended" in out  # the session ended with the leave-all
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rooms", "create", "Bad Room!"], "room"),
        (["rooms", "create", "standup", "--cap", "1"], "--cap"),
        (["rooms", "create", "standup", "--cap", "257"], "--cap"),
        (["rooms", "create", "standup", "--media", "hybrid"], "--media"),
        (["rooms", "create", "standup", "--rate", "44100"], "rate"),
        (["controller", "--mixer", "http://127.0.0.1:8088/janus"], "--mixer"),
        (["controller", "--mesh-cap", "1"], "--mesh-cap"),
        (["sessions", "standup", "--limit", "0"], "--limit"),
        (["say", "standup", "x" * 5000], "text"),
        (["agent", "join", "standup", "--mode", "karaoke"], "unknown agent mode"),
        (["agent", "join", "standup", "--mode", "play"], "needs a WAV file"),
        (
            ["agent", "join", "standup", "--mode", "play", "--file", "/nonexistent.wav"],
            "nonexistent",
        ),
        (["agent", "join", "standup", "--plugin", "nosuchmodule:Bot"], "nosuchmodule"),
        (["agent", "join", "standup", "--plugin", "json:loads"], "not a fleet.agents.Agent"),
        (["agent", "join", "Bad Room!"], "room"),
        (["agent", "join", "standup", "--id", "Not_An_Id"], "--id"),
        (["sim", "--codec", "opus"], "need --audio"),
        (["sim", "--audio", "--codec", "speex"], "unknown codecs"),
        (["demo", "--agent", "karaoke"], "knows only 'assistant'"),
        (["demo", "--agent", "assistant", "--devices", "9"], "at most 8 devices"),
    ],
)
async def test_bad_meeting_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    code, out, err = await fleet(*args, home=tmp_path)
    assert code == 2, (out, err)
    assert message in (err + out)
    assert "Traceback" not in err


async def test_rooms_sessions_say_and_a_recorder_agent(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 2)
    ids = list(secrets)
    common = ("--broker", str(operator_url(amqtt_broker)), "--prefix", amqtt_broker.prefix)
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db"),
        sim_fleet(amqtt_broker, secrets, driver_factory=audio_drivers(ids)) as sims,
        operator(amqtt_broker) as op,
    ):
        code, out, err = await fleet(
            "rooms", "create", "standup", "--cap", "3", *common, home=tmp_path
        )
        assert code == 0, err
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))).ok

        rec = tmp_path / "rec"
        code, out, err = await fleet(
            "agent",
            "join",
            "standup",
            "--mode",
            "record",
            "--dir",
            str(rec),
            "--id",
            "agent-rec",
            "--duration",
            "3",
            *common,
            home=tmp_path,
        )
        assert code == 0, err
        # It says what it does: joining, its peers, leaving, the files it wrote.
        assert "agent agent-rec joined standup as" in out
        assert "(dev-1) is here" in out
        assert "leaving standup" in out
        assert f"wrote {rec}" in out
        wavs = {p.stem.split("-", 2)[-1]: p for p in rec.glob("p-*.wav")}
        assert set(wavs) == set(ids)
        for n, device_id in enumerate(ids):
            assert hears(load_audio(wavs[device_id]), tone_for(n)), device_id

        code, out, err = await fleet("rooms", "ls", "--json", *common, home=tmp_path)
        assert code == 0, err
        rooms = {r["room"]: r for r in json.loads(out)["rooms"]}
        assert rooms["standup"]["cap"] == 3
        assert rooms["standup"]["members"] == 2  # the agent has left

        code, out, err = await fleet("say", "standup", "stand up, please", *common, home=tmp_path)
        assert code == 0, err
        assert "sent to 2 member(s)" in out
        for dev in sims.devices:
            drv = dev.driver
            assert isinstance(drv, AudioMeetingDriver)
            assert drv.participant is not None
            participant = drv.participant
            await wait_for(lambda p=participant: p.inbox, what=f"{dev.id} got the message")  # type: ignore[misc]
            assert [m.text for m in participant.inbox] == ["stand up, please"]

        code, out, err = await fleet("sessions", "standup", "--json", *common, home=tmp_path)
        assert code == 0, err
        session = json.loads(out)["sessions"][0]
        members = {p["pid"]: p for p in session["participants"]}
        assert set(members) == {*ids, "agent-rec"}
        assert members["agent-rec"]["left"] is not None
        assert members["agent-rec"]["duration_s"] >= 2.5
        code, out, err = await fleet("sessions", "standup", *common, home=tmp_path)
        assert code == 0, err
        assert "agent-rec" in out
        assert "1 session" in out
        assert "1 sessions" not in out
        # Who first (the device or agent), then the id the session gave it.
        header = next(line for line in out.splitlines() if "member" in line)
        assert header.index("member") < header.index(" as ")
        row = next(line for line in out.splitlines() if "agent-rec" in line)
        assert row.index("agent-rec") < row.index(" p-")

        code, out, err = await fleet("rooms", "rm", "standup", *common, home=tmp_path)
        assert code == 4
        assert "room_busy" in err
        code, out, err = await fleet("say", "nowhere", "hello", *common, home=tmp_path)
        assert code == 4
        assert "no_session" in err


async def test_a_killed_device_process_is_removed_and_the_last_leave_ends_the_session(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 2)
    local = {"dev-1": secrets["dev-1"]}
    remote = tmp_path / "secrets.json"
    remote.write_text(json.dumps({"dev-2": secrets["dev-2"]}))
    env = {**os.environ, "FLEET_HOME": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "sim",
        "--devices",
        "1",
        "--start",
        "2",
        "--audio",
        "--secrets",
        str(remote),
        "--broker",
        f"mqtt://{amqtt_broker.host}:{amqtt_broker.port}",
        "--prefix",
        amqtt_broker.prefix,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with (
            controller(amqtt_broker, tmp_path / "ctl.db") as ctl,
            sim_fleet(amqtt_broker, local, driver_factory=audio_drivers(["dev-1"])) as sims,
            operator(amqtt_broker) as op,
        ):
            await wait_for(
                lambda: "dev-2" in ctl.registry.devices and ctl.registry.devices["dev-2"].online,
                timeout=30,
                what="the device process is up",
            )
            assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))).ok
            dev1 = sims["dev-1"]
            drv = dev1.driver
            assert isinstance(drv, AudioMeetingDriver)
            await wait_for(
                lambda: any(drv.hears_tone(p, tone_for(0)) for p in drv.heard.peers()),
                timeout=20,
                what="dev-1 hears the device process",
            )
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            # Its will turns it offline; the server removes it and tells dev-1.
            await wait_for(lambda: not drv.peer_pids(), timeout=60, what="dev-1 told it left")
            assert dev1.meeting is not None
            assert dev1.meeting.peers == []
            live = ctl.parts[0].live["standup"]  # type: ignore[attr-defined]
            assert [m.pid for m in live.members.values()] == ["dev-1"]
            assert (await op.request(ApiOp.LEAVE, ApiRequest(device="dev-1"))).ok
            await wait_for(lambda: "standup" not in ctl.parts[0].live, what="session ended")  # type: ignore[attr-defined]
            history = (await op.request(ApiOp.SESSIONS, ApiRequest(room="standup"))).sessions
            assert history[0].ended is not None
            left = {p.pid: p.left for p in history[0].participants}
            assert left["dev-2"] is not None
            assert left["dev-2"] <= left["dev-1"]  # type: ignore[operator]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
