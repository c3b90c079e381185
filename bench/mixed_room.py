"""Mixed-room benchmark: a fleet meeting through the Janus AudioBridge, against the mesh.

For each size (10, 50 and 100 members by default) a fresh process runs the platform on
this machine: the embedded broker and the controller (its meeting server) in the
process, a local Janus, and the simulated devices in worker processes
(fleet.device.workers, one per core), each device a real aiortc participant holding
one connection to the mixer. Sizes past --aiortc (default 50) are filled with plain-RTP
AudioBridge participants (`allow_rtp_participants`: no ICE, DTLS or SRTP), run by this
process: they load Janus as members do, not the controller. Then, in the same run, the
mesh at 4 devices for comparison.

  join→converged  from join-all (the automation API, as `fleet join-all` does) to the
                  controller's verdict that every device converged;
  join→all hear   from join-all until the last device's first audible frame of the mix;
  mouth-to-ear    device 1 talks (a tone with a latency marker every 0.5 s, every other
                  tone too quiet to hide it); up to 8 listeners locate each marker to the
                  sample in what they receive (as bench/meeting.py); median and p95;
  Janus/member    Janus's CPU over a steady window per member, % of one core;
  sim/device      the worker processes' CPU per aiortc device (its one send, one
                  receive, decode and level meter), % of one core;
  ctl+broker      this process's CPU seconds (controller + broker) for the join-all,
                  from the request until every device hears, net of its rate at rest.

    python -m bench.mixed_room
    python -m bench.mixed_room --sizes 10 50 --window 10 --no-mesh

Targets, on this machine: 50 members hearing within 2 s of join-all;
mouth-to-ear through the mixer under 100 ms median; Janus at most 1.5% of a core per
16 kHz Opus member. Prints figures; asserts nothing. CPU seconds hardly move with other
load on the machine; wall times (join, latency) do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import module_command

MARKER_EVERY_S = 0.5
TALKER_AMPLITUDE = 0.3
BACKGROUND_PEAK = 0.04  # every other tone together: a marker's silence stays below 0.05
LISTENERS_KEPT = 8  # devices that keep what they hear for mouth-to-ear; the rest: levels
OPUS_PT = 111
HEAR_TIMEOUT_S = 30.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RtpMembers:
    """Plain-RTP AudioBridge participants: a 20 ms Opus tone each, from one paced task,
    replayed from fleet.media.encoding's looped packets; what comes back is counted."""

    def __init__(self, count: int, tone_hz: float, amplitude: float) -> None:
        self.count = count
        self.tone_hz, self.amplitude = tone_hz, amplitude
        self.received = [0] * count
        self._links: list[tuple[asyncio.DatagramTransport, tuple[str, int], int]] = []
        self._task: asyncio.Task[None] | None = None
        self._janus: Any = None

    async def start(self, url: str, room: Any, media_ip: str) -> None:
        from fleet.mixer.address import MixerAddress
        from fleet.mixer.janus import JanusConnection

        address = MixerAddress.parse(url)
        self._janus = JanusConnection(
            address.url, name="bench-rtp", request_timeout=10, api_secret=address.api_secret
        )
        await self._janus.open()
        loop = asyncio.get_running_loop()
        for n in range(self.count):
            received = self.received

            class Count(asyncio.DatagramProtocol):
                def datagram_received(
                    self, data: bytes, addr: object, n: int = n, received: list[int] = received
                ) -> None:
                    received[n] += 1

            transport, _ = await loop.create_datagram_endpoint(Count, local_addr=(media_ip, 0))
            port = transport.get_extra_info("sockname")[1]
            handle = await self._janus.attach("janus.plugin.audiobridge")
            body = {
                "request": "join",
                "room": room.id,
                "pin": room.pin,
                "id": f"rtp-{n + 1}",
                "display": f"rtp-{n + 1}",
                "prebuffer": 2,
                "rtp": {"ip": media_ip, "port": port, "payload_type": OPUS_PT},
            }
            answer = await self._janus.request(
                {"janus": "message", "body": body}, handle, want_event=True
            )
            rtp = answer["plugindata"]["data"]["rtp"]
            self._links.append((transport, (rtp["ip"], int(rtp["port"])), random.getrandbits(32)))
        self._task = asyncio.create_task(self._send(), name="rtp-members")

    async def _send(self) -> None:
        from fleet.media.encoding import looped_packets
        from fleet.media.sources import ToneSource

        tone = ToneSource(self.tone_hz, amplitude=self.amplitude)
        loop_info = tone.repeats()
        assert loop_info is not None
        packets = looped_packets(tone, loop_info, "opus", 32)
        t0 = time.monotonic()
        k = 0
        while True:
            payload = packets.packet(k, muted=False).data
            for transport, dest, ssrc in self._links:
                header = struct.pack(
                    "!BBHII", 0x80, OPUS_PT, k & 0xFFFF, (k * 960) & 0xFFFFFFFF, ssrc
                )
                transport.sendto(header + payload, dest)
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * 0.02 - time.monotonic()))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for transport, _, _ in self._links:
            transport.close()
        if self._janus is not None:
            await self._janus.close()


async def one_run(
    members: int, aiortc: int, mixed: bool, window_s: float, procs: int
) -> dict[str, Any]:
    from cli.stack import StackConfig, free_port, running_stack
    from fleet.client import FleetClient
    from fleet.device.audio import tone_for
    from fleet.device.sim import device_ids
    from fleet.device.workers import DeviceSound
    from fleet.media.analysis import marker_latencies
    from fleet.meetings import MeetingServer
    from fleet.mixer.process import JanusConfig, local_janus, media_address
    from fleet.protocol.messages import ApiOp, ApiRequest, RoomMedia

    home = Path(tempfile.mkdtemp(prefix="fleet-mixbench-"))
    devices = min(members, aiortc)
    rtp = members - devices
    ids = device_ids(devices)
    background = BACKGROUND_PEAK / max(1, members - 2)
    sounds = {
        device_id: DeviceSound(
            tone_for(n),
            TALKER_AMPLITUDE if n == 0 else background,
            keep_s=window_s + 4 if 0 < n <= LISTENERS_KEPT else 0.0,
            marker_every_s=MARKER_EVERY_S if n == 0 else None,
        )
        for n, device_id in enumerate(ids)
    }
    media_ip = media_address()
    if media_ip is None:
        raise SystemExit("no address but loopback here: WebRTC needs one")
    janus_cm = (
        local_janus(JanusConfig(home / "janus", name="janus-1", debug_level=2, rtp_members=True))
        if mixed
        else contextlib.nullcontext(None)
    )
    async with janus_cm as janus:
        config = StackConfig(
            home=home,
            devices=devices,
            port=free_port(),
            sim_procs=procs,
            mixer=False,  # our own Janus: its pid is measured
            mixers=[janus.url] if janus else [],
            tele_interval_s=60,
            sounds=sounds,
        )
        async with running_stack(config) as stack:
            assert stack.workers is not None
            await stack.wait_ready(120)
            server = next(p for p in stack.controller.parts if isinstance(p, MeetingServer))
            server.mixed.allow_rtp_members = True  # the load below: plain-RTP members
            async with FleetClient(stack.operator_url, stack.controller.topics) as client:
                media = RoomMedia.MIXED if mixed else RoomMedia.MESH
                made = await client.request(
                    ApiOp.ROOM_CREATE, ApiRequest(room="bench", media=media, cap=max(members, 2))
                )
                assert made.ok, made
                load = None
                if rtp:
                    first = await client.request(
                        ApiOp.JOIN, ApiRequest(room="bench", device=ids[0], timeout_s=30)
                    )
                    assert first.ok, first
                    rooms = await client.request(ApiOp.ROOMS, ApiRequest())
                    session = next(r.session for r in rooms.rooms if r.room == "bench")
                    assert session is not None
                    assert janus is not None
                    live = server.live["bench"]  # its device is on the mixer: the room exists
                    load = RtpMembers(rtp, tone_for(devices), background)
                    await load.start(janus.url, live.mixer_room, media_ip)
                    await asyncio.sleep(2)
                # At rest: what this process (controller, broker, RTP members) costs idle.
                rest0, rest_t0 = time.process_time(), time.monotonic()
                await asyncio.sleep(2)
                rest_rate = (time.process_time() - rest0) / (time.monotonic() - rest_t0)

                cpu0, sent = time.process_time(), time.monotonic()
                result = await client.request(
                    ApiOp.JOIN_ALL, ApiRequest(room="bench", timeout_s=60)
                )
                converged = time.monotonic() - sent
                hear_s = None
                deadline = time.monotonic() + HEAR_TIMEOUT_S
                while time.monotonic() < deadline:
                    hearing = await stack.workers.hearing(min_share=1.0)
                    times = [h.audible_at for h in hearing.values()]
                    if all(times):
                        hear_s = max(times) - sent  # type: ignore[type-var]
                        break
                    await asyncio.sleep(0.1)
                join_wall = time.monotonic() - sent
                join_cpu = time.process_time() - cpu0 - rest_rate * join_wall

                await asyncio.sleep(1.5)  # past the start-up transients
                workers0 = sum(cpu_seconds(p) for p in stack.workers.pids)
                janus0 = cpu_seconds(janus.pid) if janus else 0.0
                wall0 = time.monotonic()
                await asyncio.sleep(window_s)
                wall = time.monotonic() - wall0
                workers_cpu = sum(cpu_seconds(p) for p in stack.workers.pids) - workers0
                janus_cpu = (cpu_seconds(janus.pid) - janus0) if janus else None

                markers = await stack.workers.markers()
                spoken = markers[ids[0]][0]
                latencies: list[float] = []
                for device_id in ids[1:]:
                    arrivals = markers[device_id][1]
                    stream = arrivals.get(ids[0]) or (
                        next(iter(arrivals.values())) if len(arrivals) == 1 else []
                    )
                    latencies += marker_latencies(spoken, stream)
                rtp_heard = min(load.received) if load else None
                if load is not None:
                    await load.close()
                await client.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=30))
    latencies.sort()
    return {
        "members": members,
        "devices": devices,
        "rtp": rtp,
        "mixed": mixed,
        "converged_ok": bool(result.ok),
        "join_converged_s": converged,
        "join_hear_s": hear_s,
        "m2e_median_ms": statistics.median(latencies) * 1000 if latencies else None,
        "m2e_p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000 if latencies else None,
        "markers": len(latencies),
        "janus_pct_per_member": 100 * janus_cpu / wall / members if janus_cpu is not None else None,
        "sim_pct_per_device": 100 * workers_cpu / wall / devices,
        "join_cpu_s": join_cpu,
        "rtp_min_packets": rtp_heard,
        "load": os.getloadavg()[0],
    }


def child(members: int, aiortc: int, mixed: bool, window_s: float, procs: int) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(one_run(members, aiortc, mixed, window_s, procs))))


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--aiortc", type=int, default=50, help="aiortc devices at most")
    parser.add_argument("--window", type=float, default=10.0, help="CPU window, seconds")
    parser.add_argument("--sim-procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-mesh", action="store_true", help="skip the 4-member mesh")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        members, kind = int(args.child[0]), args.child[1]
        child(members, args.aiortc, kind == "mixed", args.window, args.sim_procs)
        return
    runs = [(n, "mixed") for n in args.sizes] + ([] if args.no_mesh else [(4, "mesh")])
    rows = []
    for members, kind in runs:
        out = subprocess.run(
            module_command("bench.mixed_room", "--child", str(members), kind,
                           "--window", str(args.window), "--aiortc", str(args.aiortc),
                           "--sim-procs", str(args.sim_procs)),
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if out.returncode != 0:
            print(f"{members} members ({kind}): run failed\n{out.stderr[-3000:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"{'members':>7} {'path':>5} {'aiortc+rtp':>10} {'join→conv':>9} {'join→hear':>9} "
        f"{'m2e med':>8} {'m2e p95':>8} {'Janus/mbr':>9} {'sim/dev':>8} {'ctl+brk CPU':>11}"
    )
    for r in rows:
        print(
            f"{r['members']:>7} {'mixed' if r['mixed'] else 'mesh':>5} "
            f"{r['devices']:>5}+{r['rtp']:<4} {fmt(r['join_converged_s'], ' s'):>9} "
            f"{fmt(r['join_hear_s'], ' s'):>9} {fmt(r['m2e_median_ms'], ' ms', 1):>8} "
            f"{fmt(r['m2e_p95_ms'], ' ms', 1):>8} {fmt(r['janus_pct_per_member'], '%'):>9} "
            f"{fmt(r['sim_pct_per_device'], '%'):>8} {fmt(r['join_cpu_s'], ' s', 3):>11}"
            + ("" if r["converged_ok"] else "  (join-all did not converge)")
        )
        if r["rtp"]:
            print(f"{'':>14}every plain-RTP member got >= {r['rtp_min_packets']} mix packets")
    print(
        "aiortc: simulated devices, one WebRTC connection each (to the mixer, or to every mesh "
        "peer); rtp: plain-RTP AudioBridge members (no ICE/DTLS/SRTP), Janus load only. "
        "m2e: device 1 to up to 8 listeners. CPU in % of one core over the steady window; "
        "ctl+brk: CPU seconds for the join-all, net of rest. Wall times move with the "
        f"machine's other load (load average now {os.getloadavg()[0]:.1f}).\n"
        "targets: 50 members hear within 2 s of join-all; m2e through the mixer < 100 ms "
        "median; Janus <= 1.5% of a core per 16 kHz Opus member."
    )


if __name__ == "__main__":
    main()
