"""The real firmware in Espressif's QEMU against Mosquitto and the controller: how long it takes.

    .venv/bin/python -m bench.firmware_qemu [--cycles 20]

Builds the esp32c3 image with the QEMU network (cached, as the firmware_qemu test tier does:
tests/support/firmware_qemu.py says where ESP-IDF and QEMU are found), provisions it with
`fleet image`, and prints:
  - QEMU start -> online (the controller's registry has its birth)
  - join-all -> converged (the operator's request answered, the device's state reported)
  - reboot command -> online again
  - ota command -> the new version reported in a birth
  - free heap (telemetry sys.heap_free) after join/leave cycles, against the first cycle: a
    leak shows as a trend. The ESP32-C3 build is signalling-only (no esp_peer).
Times are wall clock on this machine, emulation included: they show regressions, not what a
board does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

DEV = "qemu-1"
WAIT_S = 60.0


async def until(pred: object, what: str, timeout: float = WAIT_S) -> float:
    """Seconds until pred() holds."""
    t0 = time.monotonic()
    while not pred():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def run(cycles: int) -> None:
    from fleet.auth import CredentialStore
    from fleet.protocol.messages import ApiOp, ApiRequest, Telemetry
    from tests.support.brokers import mosquitto_handle, mqtt_client
    from tests.support.firmware_qemu import (
        ImageServer,
        Qemu,
        build_firmware,
        factory_image,
        find_tools,
        sntp,
    )
    from tests.support.running import controller, operator

    tools = find_tools()
    if isinstance(tools, str):
        print(f"firmware_qemu bench: {tools}")
        return
    fw = build_firmware(tools)
    print(
        f"build (incremental): {fw.build_s:.1f} s; image {fw.version}, OTA image {fw.ota_version}"
    )
    work = Path(tempfile.mkdtemp(prefix="fleet-qemu-bench-"))
    store = CredentialStore(work / "credentials.json")
    handle = mosquitto_handle(store, "fleet/v1", work / "mosquitto")
    await handle.start()
    images = ImageServer()
    images.files["ota.bin"] = fw.ota_app.read_bytes()
    heaps: list[tuple[int, int]] = []
    try:
        factory_image(fw, work / "flash.bin", DEV, handle.port, store.path)
        handle.backend.sync()
        qemu = Qemu(tools, work / "flash.bin", work / "serial")
        with sntp():
            async with (
                controller(handle, work / "ctl.db") as ctl,
                operator(handle) as op,
                mqtt_client(handle, *_watch_user(handle)) as client,
            ):
                await client.subscribe(handle.topics.tele(DEV), qos=0)
                tele: list[Telemetry] = []
                pump = asyncio.create_task(_collect(client, tele))
                reg = ctl.registry.devices

                def online() -> bool:
                    return DEV in reg and reg[DEV].online

                await qemu.start()
                boot_s = await until(online, "online")
                print(f"QEMU start -> online:            {boot_s:6.2f} s")

                t0 = time.monotonic()
                joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=30))
                assert joined.counts == {"converged": 1}, joined
                print(f"join-all -> converged:           {time.monotonic() - t0:6.2f} s")
                await op.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=30))

                t0 = time.monotonic()
                before = reg[DEV].birth
                # The request's answer is the final ack, which the new boot sends.
                await op.request(ApiOp.CMD, ApiRequest(device=DEV, cmd_op="reboot", timeout_s=60))
                await until(lambda: online() and reg[DEV].birth is not before, "a new birth")
                print(f"reboot command -> online again:  {time.monotonic() - t0:6.2f} s")

                t0 = time.monotonic()
                url = images.url("ota.bin")
                await op.request(
                    ApiOp.CMD, ApiRequest(device=DEV, cmd_op="ota", args={"url": url}, timeout_s=5)
                )
                await until(
                    lambda: online() and reg[DEV].fw == fw.ota_version, "the new version", 180
                )
                print(f"ota command -> new version seen: {time.monotonic() - t0:6.2f} s")

                for n in range(1, cycles + 1):
                    j = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="cycle", timeout_s=30))
                    left = await op.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=30))
                    assert j.counts == left.counts == {"converged": 1}, (j, left)
                    if n in (1, cycles) or n % 5 == 0:
                        mark = len(tele)
                        await until(lambda mark=mark: len(tele) > mark, "telemetry", 30)
                        heap = tele[-1].sys.heap_free
                        assert heap is not None
                        heaps.append((n, heap))
                pump.cancel()
        await qemu.kill()
    finally:
        images.close()
        await handle.stop()
    first = heaps[0][1]
    print(f"free heap after join/leave cycles (telemetry; first cycle {first} B):")
    for n, heap in heaps:
        print(f"  cycle {n:3d}: {heap:7d} B  ({heap - first:+d} B)")


def _watch_user(handle: object) -> tuple[str, str]:
    secret = handle.add_user("bench-watch", "controller")  # type: ignore[attr-defined]
    return "bench-watch", secret


async def _collect(client: object, out: list[object]) -> None:
    from fleet.protocol.messages import Telemetry, decode

    async for message in client.messages:  # type: ignore[attr-defined]
        try:
            out.append(decode(Telemetry, bytes(message.payload)))
        except ValueError:
            print("unreadable telemetry:", json.dumps(bytes(message.payload)[:100].decode()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="join/leave cycles (default 20)")
    args = parser.parse_args()
    asyncio.run(run(args.cycles))


if __name__ == "__main__":
    main()
