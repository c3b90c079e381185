"""The firmware's C core on the host: unit tests (plain and ASan+UBSan), the fuzzer, and
fleet-host-device (the real core as a Linux process) against real brokers.

Everything is built once per session with the project's own build files
(firmware/host/CMakeLists.txt; the `build` fixture in tests/support/firmware_build.py, shared with
tests/control_plane/test_device_conformance.py). Needs the Debian packages in firmware/host/DEPENDENCIES;
without a C compiler or cmake the tests skip, except in CI (CI=true), where they fail.

Env: FLEET_FUZZ_SECONDS (default 20) bounds the fuzz run; FLEET_FIRMWARE_BUILD reuses a
build directory (handy while working on the C code).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.brokers import BrokerHandle
from tests.support.firmware_build import (
    HOST_DIR,
    QEMU_RV32,
    Build,
    Device,
    build,
    build_rv32,
    cjson_failure,
    controller_inbox,
    requires_toolchain,
)
from tests.support.firmware_build import IN_CI as _IN_CI
from tests.support.firmware_build import run_tool as _run

from fleet.protocol.messages import Ack, AckCode, MeetJoined, State, Status, decode, encode

SEED_CORPUS = HOST_DIR / "fuzz" / "corpus"
MEDIA_SEED_CORPUS = HOST_DIR / "fuzz" / "media_corpus"
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}
SUMMARY_RE = re.compile(r"^(\d+) passed, (\d+) failed$")

__all__ = ["build"]  # the session-scoped fixture, imported so that pytest finds it here
pytestmark = [requires_toolchain, pytest.mark.timeout(300)]


def _summary(output: str) -> tuple[int, int]:
    lines = output.strip().splitlines()
    assert lines, "no output"
    m = SUMMARY_RE.match(lines[-1])
    assert m, f"last line is not the summary: {lines[-1]!r}"
    return int(m[1]), int(m[2])


# --- unit tests and fuzzing -------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["plain", "asan"])
def test_core_unit_tests(build: Build, variant: str) -> None:
    exe = build.tests if variant == "plain" else build.tests_asan
    _check_unit_run(_run([str(exe)], timeout=120, env={**os.environ, **SANITIZER_ENV}), 50)


@pytest.mark.parametrize("variant", ["plain", "asan"])
def test_media_core_unit_tests(build: Build, variant: str) -> None:
    """The media core with real Opus (libopus): wire formats, jitter, mixing, the gate."""
    exe = build.media_tests if variant == "plain" else build.media_tests_asan
    _check_unit_run(_run([str(exe)], timeout=120, env={**os.environ, **SANITIZER_ENV}), 12)


def test_media_core_unit_tests_on_rv32_under_qemu(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Built for rv32imc with picolibc (4-byte long and size_t) and run in qemu -M virt."""
    out = build_rv32(tmp_path_factory)
    proc = _run([*QEMU_RV32, str(out / "media_core_tests.elf")], timeout=120)
    _check_unit_run(proc, 10)


def test_fleet_core_unit_tests_on_rv32_under_qemu(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = build_rv32(tmp_path_factory)
    elf = out / "fleet_core_tests.elf"
    if not elf.exists():
        why = f"no cJSON source for rv32 (firmware/host/fetch_cjson.sh): {cjson_failure()}"
        if _IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    _check_unit_run(_run([*QEMU_RV32, str(elf)], timeout=120), 50)


def test_device_core_leaves_out_the_controller_codec(build: Build) -> None:
    """What controller/fleet_msg_controller.h declares is defined in the tests' library
    only, never in fleet_core's (a device does not carry it)."""
    header = HOST_DIR.parent / "components" / "fleet_core" / "controller" / "fleet_msg_controller.h"
    declared = set(re.findall(r"^\w[\w ]*?\b(fleet_\w+)\(", header.read_text(), re.M))
    assert {"fleet_status_parse", "fleet_meet_down_encode"} <= declared

    def defined(lib: Path) -> set[str]:
        proc = _run(["nm", "--defined-only", str(lib)], timeout=60)
        assert proc.returncode == 0, proc.stderr
        return {line.split()[-1] for line in proc.stdout.splitlines() if " T " in line}

    assert declared <= defined(build.controller_lib)
    assert not declared & defined(build.core_lib)


def _check_unit_run(proc: subprocess.CompletedProcess[str], at_least: int) -> None:
    # QEMU's semihosting console writes the guest's stdout to its own stderr.
    passed, failed = _summary(proc.stdout or proc.stderr)
    assert failed == 0, proc.stderr
    assert passed >= at_least
    assert proc.returncode == 0, proc.stderr
    assert "runtime error" not in proc.stderr  # UBSan
    assert "Sanitizer" not in proc.stderr


@pytest.mark.parametrize("target", ["inbound", "media"])
def test_fuzz(build: Build, tmp_path: Path, target: str) -> None:
    """Bounded libFuzzer runs: the core's inbound messages, the media core's RTP and SDP."""
    fuzzer, seeds = (
        (build.fuzzer, SEED_CORPUS)
        if target == "inbound"
        else (build.media_fuzzer, MEDIA_SEED_CORPUS)
    )
    if not fuzzer.exists():
        if _IN_CI:
            pytest.fail("the fuzzer was not built: clang and libclang-rt-14-dev are required")
        pytest.skip("clang not available: the fuzzer was not built")
    seconds = int(os.environ.get("FLEET_FUZZ_SECONDS", "20"))
    work = tmp_path / "corpus"  # new inputs go here, the checked-in seeds stay untouched
    work.mkdir()
    proc = _run(
        [
            str(fuzzer),
            f"-max_total_time={seconds}",
            "-max_len=8192",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-artifact_prefix={tmp_path}/",
            str(work),
            str(seeds),
        ],
        timeout=seconds + 120,
    )
    tail = proc.stderr[-4000:]
    assert proc.returncode == 0, tail
    assert "Done " in proc.stderr, tail
    assert not list(tmp_path.glob("crash-*")), tail
    assert not list(tmp_path.glob("leak-*")), tail
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)
    assert runs, tail
    assert int(runs[1]) > 1000, tail


# --- the host device against a real broker -----------------------------------------------------


def _status(p: bytes) -> Status:
    return decode(Status, p)


def _state(p: bytes) -> State:
    return decode(State, p)


def _ack(p: bytes) -> Ack:
    return decode(Ack, p)


async def test_host_device_against_broker(
    any_broker: BrokerHandle, build: Build, tmp_path: Path
) -> None:
    dev = "fw-dev-1"
    t = any_broker.topics
    secret = any_broker.add_device(dev, groups=("kitchen",))
    args = [
        "--broker",
        any_broker.url(dev, secret),
        "--id",
        dev,
        "--prefix",
        any_broker.prefix,
        "--group",
        "kitchen",
        "--tele-interval",
        "1",
    ]
    device = Device(build.device_asan, args, tmp_path / "device.log")
    status, state, ack, tele = t.status(dev), t.state(dev), t.ack(dev), t.tele(dev)
    async with controller_inbox(any_broker, [status, state, ack, tele]) as inbox:
        ctl = inbox.client
        try:
            await device.start()

            # Birth: retained, what the device is.
            birth = _status(await inbox.wait(status, lambda p: _status(p).online))
            assert birth.hw == "host"
            assert birth.fw
            assert birth.groups == ["kitchen"]
            assert birth.caps is not None
            assert birth.caps.audio is False
            assert birth.caps.codecs == []
            assert birth.ts is not None

            # Own desired doc: the device asks to join; until the meeting server answers, its
            # state shows the room at the rev before (protocol.md 5: a rev is reported once
            # what it asks holds), then rev 5 with the session.
            await ctl.publish(
                t.desired(dev),
                json.dumps({"rev": 5, "meeting": {"room": "standup", "mic": True}}),
                qos=1,
                retain=True,
            )
            st = _state(await inbox.wait(state, lambda p: _state(p).meeting is not None))
            assert st.rev == 0
            assert st.meeting is not None
            assert st.meeting.room == "standup"
            assert st.meeting.session is None
            joined = MeetJoined(type="joined", room="standup", session="s-1", participant="p-1")
            await ctl.publish(t.meet_down(dev), encode(joined), qos=1)
            st = _state(await inbox.wait(state, lambda p: _state(p).rev == 5))
            assert st.meeting is not None
            assert st.meeting.room == "standup"
            assert (st.meeting.session, st.meeting.participant) == ("s-1", "p-1")
            assert st.mic

            # A group doc with a higher rev and no meeting wins.
            await ctl.publish(
                t.group_desired("kitchen"),
                json.dumps({"rev": 7, "meeting": None}),
                qos=1,
                retain=True,
            )
            st = _state(await inbox.wait(state, lambda p: _state(p).rev == 7))
            assert st.meeting is None
            assert b'"meeting"' not in inbox.on(state)[-1]  # null is left out

            # A lower rev is kept but not applied; malformed docs are refused; none crashes it.
            mark = len(inbox.messages)
            await ctl.publish(
                t.desired(dev),
                json.dumps({"rev": 6, "meeting": {"room": "late"}}),
                qos=1,
                retain=True,
            )
            await ctl.publish(t.desired(dev), b'{"rev": 9, "meeting":', qos=1)
            await ctl.publish(t.desired(dev), b'{"rev": "9"}', qos=1)
            await ctl.publish(t.desired(dev), b'{"rev": 9, "pad": "' + b"x" * 66_000 + b'"}', qos=1)

            ping = {"id": "c1", "op": "ping", "args": {}, "ttl_ms": 30000}
            await ctl.publish(t.cmd(dev), json.dumps(ping), qos=1)
            first = await inbox.wait(ack, lambda p: _ack(p).id == "c1", start=mark)
            a = _ack(first)
            assert a.ok
            assert a.code is AckCode.OK
            assert a.done
            assert a.result is not None
            assert a.result["uptime_s"] > 0
            await asyncio.sleep(0.3)
            assert all(_state(p).rev == 7 for p in inbox.on(state, mark)), inbox.on(state, mark)
            assert device.alive

            # The same command id again: the same ack, byte for byte.
            mark = len(inbox.messages)
            await asyncio.sleep(0.05)  # uptime moves on: a re-run would answer differently
            await ctl.publish(t.cmd(dev), json.dumps(ping), qos=1)
            again = await inbox.wait(ack, start=mark)
            assert again == first

            # A bad command is answered, not fatal.
            mark = len(inbox.messages)
            await ctl.publish(t.cmd(dev), b"not json", qos=1)
            bad = _ack(await inbox.wait(ack, start=mark))
            assert bad.id == "?"
            assert bad.code is AckCode.BAD_REQUEST
            assert not bad.ok

            # Telemetry flows (QoS 0, every second here).
            await inbox.wait(tele)

            # Reboot: accepted, graceful offline, a new birth, then the final ack.
            mark = len(inbox.messages)
            await ctl.publish(t.cmd(dev), json.dumps({"id": "r1", "op": "reboot"}), qos=1)
            acc = _ack(await inbox.wait(ack, lambda p: _ack(p).id == "r1", start=mark))
            assert acc.code is AckCode.ACCEPTED
            assert not acc.done
            await inbox.wait(status, lambda p: not _status(p).online, start=mark)
            await inbox.wait(status, lambda p: _status(p).online, start=mark)
            final = _ack(await inbox.wait(ack, lambda p: _ack(p).done, start=mark))
            assert final.id == "r1"
            assert final.code is AckCode.OK
            # After the restart it converged again from the retained docs (rev 7 beats 6).
            st = _state(await inbox.wait(state, lambda p: _state(p).rev == 7, start=mark))
            assert st.meeting is None

            # SIGKILL: no goodbye, so the broker publishes the will.
            mark = len(inbox.messages)
            assert await device.signal(signal.SIGKILL) == -signal.SIGKILL
            will = await inbox.wait(status, start=mark)
            assert json.loads(will) == {"online": False}

            # SIGTERM: a clean goodbye, exit 0, and {"online": false} stays retained.
            await device.start()
            mark = len(inbox.messages)
            await inbox.wait(status, lambda p: _status(p).online, start=mark)
            await inbox.wait(state, lambda p: _state(p).rev == 7, start=mark)
            mark = len(inbox.messages)
            assert await device.signal(signal.SIGTERM) == 0, device.text()[-3000:]
            assert json.loads(await inbox.wait(status, start=mark)) == {"online": False}
        finally:
            await device.stop()

    # A fresh subscriber gets the retained goodbye.
    async with controller_inbox(any_broker, [status]) as late:
        assert json.loads(await late.wait(status)) == {"online": False}
        assert late.messages[-1].retain

    log = device.text()
    assert "Sanitizer" not in log, log[-3000:]
    assert "runtime error" not in log, log[-3000:]
    assert "refused" in log  # the malformed desired docs were logged


# --- main/ against the ESP-IDF stubs (no IDF here) -----------------------------------------------

IDF_STUBS = HOST_DIR / "idf_stubs"
BOARDS = ("none", "qemu", "s3", "korvo2", "xiao")


def test_main_compiles_against_idf_stubs() -> None:
    """Every file of main/, per audio board, against headers that mimic IDF's (host/idf_stubs)."""
    proc = _run(
        ["bash", str(HOST_DIR / "idf_syntax_check.sh"), *BOARDS],
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sources = sorted(p.name for p in (HOST_DIR.parent / "main").glob("*.c"))
    for board in BOARDS:
        for name in sources:
            assert f"syntax {board} {name}: ok" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("board", "defined", "undefined"),
    [
        ("none", ["CONFIG_FLEET_NET_WIFI", "CONFIG_FLEET_BOARD_NONE"], ["CONFIG_FLEET_AUDIO_RATE"]),
        ("qemu", ["CONFIG_FLEET_NET_OPENETH", "CONFIG_ETH_USE_OPENETH"], ["CONFIG_FLEET_AUDIO"]),
        ("s3", ["CONFIG_IDF_TARGET_ESP32S3", "CONFIG_FLEET_BOARD_NONE"], ["CONFIG_FLEET_AUDIO"]),
        ("korvo2", ["CONFIG_FLEET_AUDIO", "CONFIG_FLEET_AUDIO_RATE"], ["CONFIG_FLEET_NET_OPENETH"]),
    ],
)
def test_stub_sdkconfig_defines_only_what_kconfig_would(
    tmp_path: Path, board: str, defined: list[str], undefined: list[str]
) -> None:
    """The stub check's sdkconfig.h comes from main/Kconfig.projbuild and the board's defaults:
    FLEET_AUDIO_RATE depends on FLEET_AUDIO, so a board without audio has no such macro (a
    hand-written list once defined it for every board and hid a build error)."""
    out = tmp_path / "sdkconfig.h"
    proc = _run([sys.executable, str(HOST_DIR / "stub_sdkconfig.py"), board, str(out)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    macros = {
        line.split()[1] for line in out.read_text().splitlines() if line.startswith("#define")
    }
    assert set(defined) <= macros
    assert not set(undefined) & macros


def test_idf_stubs_break_where_idf_5_1_broke(tmp_path: Path) -> None:
    """The stubs' esp-mqtt is that of IDF v5.1.2-v5.2.1: a const topic through the
    esp_mqtt_client_subscribe macro does not compile, as it did not there."""
    src = tmp_path / "subscribe.c"
    src.write_text(
        '#include "mqtt_client.h"\n'
        "int sub(esp_mqtt_client_handle_t c, const char *topic);\n"
        "int sub(esp_mqtt_client_handle_t c, const char *topic)\n"
        "{ return esp_mqtt_client_subscribe(c, topic, 1); }\n"
    )
    cmd = ["gcc", "-std=gnu17", "-fsyntax-only", "-Wall", "-Werror", f"-I{IDF_STUBS}", str(src)]
    proc = _run(cmd, timeout=60)
    assert proc.returncode != 0
    assert "_Generic" in proc.stderr
    assert "const char *" in proc.stderr
