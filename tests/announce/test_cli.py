"""`fleet announce` and `fleet dnd` as a user runs them: a subprocess against a real broker,
controller and simulated devices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fleet.speech.audio import wav_bytes
from tests.announce.support import announcing_controller
from tests.support.brokers import BrokerHandle
from tests.support.cli import fleet
from tests.support.running import operator_url, register_devices, sim_fleet

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["announce"], "say what"),
        (["announce", "hello"], "name one target"),
        (["announce", "dev-1", "hello", "--all"], "not DEVICE and --all"),
        (["announce", "hello", "--group", "kitchen", "--room", "standup"], "name one target"),
        (["announce", "a", "b", "c"], "quote a TEXT"),
        (["announce", "dev-1", "x" * 1001], "at most 1000"),
        (["announce", "Bad_Device", "hello"], "invalid device id"),
        (["announce", "--all", "--priority", "loud", "hi"], "'--priority'"),
        (["announce", "dev-1", "hi", "--sound", "nowhere.wav"], "at most a DEVICE"),
        (["announce", "dev-1", "--sound", "nowhere.wav"], "nowhere.wav"),
        (["dnd", "dev-1", "maybe"], "is not one of 'on', 'off'"),
    ],
)
async def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    code, out, err = await fleet(*args, home=tmp_path)
    assert code == 2, (out, err)
    assert message in (err + out), err
    assert "Traceback" not in err


async def test_announce_and_dnd_end_to_end(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    secrets = register_devices(amqtt_broker, 2)
    common = ("--broker", str(operator_url(amqtt_broker)), "--prefix", amqtt_broker.prefix)
    sound = tmp_path / "bell.wav"
    sound.write_bytes(wav_bytes(np.full(4000, 0x2000, dtype="<i2"), 16000))
    not_wav = tmp_path / "bell.mp3"
    not_wav.write_bytes(b"ID3 not a wav")
    async with (
        announcing_controller(amqtt_broker, tmp_path / "ctl.db"),
        sim_fleet(amqtt_broker, secrets),
    ):
        code, out, err = await fleet("announce", "dev-1", "lunch is ready", *common, home=tmp_path)
        assert code == 0, err
        assert "dev-1" in out
        assert "played" in out

        code, out, err = await fleet("dnd", "dev-2", "on", *common, home=tmp_path)
        assert code == 0, err
        code, out, err = await fleet(
            "announce", "--all", "--sound", str(sound), "--json", *common, home=tmp_path
        )
        assert code == 0, err
        result = json.loads(out)
        outcomes = {d["device"]: d["outcome"] for d in result["devices"]}
        assert outcomes == {"dev-1": "played", "dev-2": "skipped"}
        assert result["ann"]

        code, out, err = await fleet(
            "announce",
            "--all",
            "--priority",
            "urgent",
            "--no-chime",
            "hi",
            "--json",
            *common,
            home=tmp_path,
        )
        assert code == 0, err
        assert json.loads(out)["counts"] == {"played": 2}

        code, _, err = await fleet("announce", "dev-9", "hello", *common, home=tmp_path)
        assert code == 4
        assert "unknown device 'dev-9'" in err
        code, _, err = await fleet("announce", "--room", "nowhere", "hi", *common, home=tmp_path)
        assert code == 4
        assert "no room named 'nowhere'" in err
        code, _, err = await fleet(
            "announce", "dev-1", "--sound", str(not_wav), *common, home=tmp_path
        )
        assert code == 2
        assert "not a WAV file" in err
        code, _, err = await fleet("dnd", "dev-2", "off", *common, home=tmp_path)
        assert code == 0, err
