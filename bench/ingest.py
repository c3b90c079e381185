"""Telemetry ingest benchmark: devices -> broker -> controller -> database, end to end, zero loss.

Each part is its own process, deployed as a user would:

  embedded:        `fleet up --engine amqtt --devices 0 --influx-url ...` (amqtt broker +
                   controller, one process)
  embedded-split:  `fleet broker run --engine amqtt` + `fleet controller --influx-url ...`
  mosquitto:       a mosquitto subprocess + `fleet controller --influx-url ...`; with
                   `--controllers N`, the controller with `--ingest-share` and N-1
                   `fleet ingest` processes split the telemetry (a shared subscription)

The database is VictoriaMetrics (Debian's `victoria-metrics`), written through
influxdb-client's batching `/api/v2/write`. Telemetry comes from load-generator
processes: D devices with their own credentials (client id = device id, as the
ACL wants), each publishing `tele` at QoS 0 in the protocol's shape, paced to
the requested total rate. Every message is counted when sent and counted again
in the database (`device_uptime_s` samples); the run reports any difference.

    python -m bench.ingest --broker embedded --rate 2000
    python -m bench.ingest --broker mosquitto --rate 5000
    python -m bench.ingest --broker mosquitto --compare-shared --rate 12000   # 1 vs 2 processes

Targets, per controller process: >= 2,000 msg/s on the embedded
broker, >= 5,000 on Mosquitto. Throughput is messages stored / (time from the
first message sent to the last one stored). CPU figures come from /proc (user +
system seconds of each process during the run), which a busy machine disturbs
far less than wall-clock time. With several controller processes the capacity by CPU
is what the busiest of them could take alone on a core of its own (messages / its CPU
seconds x processes, at an even split): on a shared machine the wall-clock throughput
mostly says how much CPU the others left. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from bench import module_command
from bench.fanout import FLEET, MOSQUITTO, Procs, peak_rss_mib, wait_port
from broker.mosquitto.config import write_mosquitto_config
from cli.stack import free_port
from fleet.auth import CredentialStore, Role
from fleet.device.sim import device_ids

PREFIX = "fleet/v1"
VM = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_count(url: str) -> int:
    """Telemetry messages stored: one `device_uptime_s` sample per message."""
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=30).read()
    query = urllib.parse.urlencode({"match[]": '{__name__="device_uptime_s"}'})
    with urllib.request.urlopen(f"{url}/api/v1/export?{query}", timeout=120) as resp:
        return sum(len(json.loads(line)["values"]) for line in resp if line.strip())


# --- the load generator (a child process of this script) -------------------------------------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_str(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


def _connect(port: int, device: str, secret: str) -> socket.socket:
    """An MQTT 3.1.1 CONNECT (clean session, keepalive off) with the device's credentials."""
    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    body = _mqtt_str("MQTT") + bytes([4, flags]) + (0).to_bytes(2, "big")
    body += _mqtt_str(device) + _mqtt_str(device) + _mqtt_str(secret)
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
    connack = sock.recv(4)
    if len(connack) != 4 or connack[3] != 0:
        raise SystemExit(f"load generator: {device} refused by the broker: {connack!r}")
    return sock


def generate(args: argparse.Namespace) -> None:
    """Publish telemetry for some devices at a paced rate; print how many were sent.

    Raw MQTT on plain sockets (QoS 0 PUBLISH frames, as a device sends `tele`), so
    the generator costs little next to what it measures.
    """
    secrets: dict[str, str] = json.loads(Path(args.secrets).read_text())
    ids = device_ids(args.count, "dev", args.first)
    socks = [_connect(args.port, d, secrets[d]) for d in ids]
    topics = [_mqtt_str(f"{PREFIX}/dev/{d}/tele") for d in ids]
    sent = [0] * len(ids)
    pending = [bytearray() for _ in ids]
    time.sleep(max(0.0, args.start_at - time.time()))  # every generator starts together
    tick = 0.02
    started = time.monotonic()
    total = 0
    while (now := time.monotonic()) < started + args.seconds:
        # Everything owed up to the end of this tick, one write per device, then sleep.
        owed = int(args.rate * ((now - started) + tick)) - total
        stamp = time.time()
        for _ in range(owed):
            k = total % len(ids)
            payload = (
                f'{{"ts":{stamp:.6f},"wifi":{{"rssi":-55,"channel":6,"reconnects":0}},'
                f'"sys":{{"heap_free":180000,"heap_min":150000,"uptime_s":{sent[k]}.0,'
                f'"cpu_load":0.1,"mqtt_reconnects":0}}}}'
            ).encode()
            body = topics[k] + payload
            pending[k] += b"\x30" + _remaining_length(len(body)) + body
            sent[k] += 1
            total += 1
            stamp += 1e-6  # distinct timestamps within a device's series
        for k, buf in enumerate(pending):
            if buf:
                socks[k].sendall(buf)
                buf.clear()
        time.sleep(max(0.0, started + ((now - started) // tick + 1) * tick - time.monotonic()))
    elapsed = time.monotonic() - started
    print(json.dumps({"sent": total, "seconds": elapsed}), flush=True)
    # Stay connected until told (stdin closes), i.e. until everything is counted: the
    # run measures the pipeline, not how a broker closes a connection with a backlog.
    sys.stdin.read()
    for sock in socks:
        sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, a clean goodbye
        sock.close()


# --- the benchmark ----------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    home = workdir / "home"
    home.mkdir()
    store = CredentialStore(home / "credentials.json")
    ids = device_ids(args.devices)
    secrets = store.add_devices(ids)
    (workdir / "secrets.json").write_text(json.dumps(secrets))
    port, vm_port = free_port(), free_port()
    vm_url = f"http://127.0.0.1:{vm_port}"
    procs = Procs(workdir)
    env = {"FLEET_HOME": str(home)}
    influx = [
        "--influx-url",
        vm_url,
        "--influx-bucket",
        "fleet",
        "--influx-org",
        "espfleet",
        "--influx-batch-size",
        str(args.batch_size),
        "--influx-flush-interval",
        str(args.flush_interval_ms),
    ]
    influx_worker = list(influx)  # `fleet ingest` has no Home Assistant part to turn off
    influx += ["--no-ha"] if args.no_ha else []
    worker_pids: list[int] = []
    try:
        vm_pid = await procs.start(
            "victoria-metrics",
            VM,
            f"-storageDataPath={workdir / 'vm'}",
            f"-httpListenAddr=127.0.0.1:{vm_port}",
            "-loggerLevel=ERROR",
        )
        await wait_port(vm_port, procs)
        broker_pid = None  # a broker in a process of its own
        if args.broker == "embedded":
            ctl_pid = await procs.start(
                "up",
                *FLEET,
                "up",
                "--engine",
                "amqtt",
                "--devices",
                "0",
                "--port",
                str(port),
                *influx,
                env=env,
            )
            await wait_port(port, procs)
            label = "amqtt broker + controller process"
        else:
            ctl_secret = store.add("controller", Role.CONTROLLER)
            worker_secrets = [
                store.add(f"ingest-{n}", Role.CONTROLLER) for n in range(1, args.controllers)
            ]
            if args.broker == "mosquitto":
                conf = write_mosquitto_config(
                    workdir / "mosquitto", store, PREFIX, port, run_as="root"
                )
                broker_pid = await procs.start("broker", MOSQUITTO, "-c", str(conf))
            else:
                broker_pid = await procs.start(
                    "broker",
                    *FLEET,
                    "broker",
                    "run",
                    "--engine",
                    "amqtt",
                    "--port",
                    str(port),
                    env=env,
                )
            await wait_port(port, procs)
            ctl_pid = await procs.start(
                "controller",
                *FLEET,
                "controller",
                "--db",
                str(workdir / "ctl.db"),
                "--broker",
                f"mqtt://controller:{ctl_secret}@127.0.0.1:{port}",
                *influx,
                *(["--ingest-share", "ingest"] if args.controllers > 1 else []),
                env=env,
            )
            for n, secret in enumerate(worker_secrets, start=1):
                worker_pids.append(
                    await procs.start(
                        f"ingest-{n}",
                        *FLEET,
                        "ingest",
                        "--share",
                        "ingest",
                        "--client-id",
                        f"ingest-{n}",
                        "--broker",
                        f"mqtt://ingest-{n}:{secret}@127.0.0.1:{port}",
                        *influx_worker,
                        env=env,
                    )
                )
            label = (
                f"{args.controllers} controller processes sharing the ingest"
                if args.controllers > 1
                else "controller process"
            )
        # The controller is up when it has written its first `fleet` counts point... or just
        # give it a moment to connect and subscribe: a probe would be counted as telemetry.
        logs = [workdir / ("up.log" if args.broker == "embedded" else "controller.log")]
        logs += [workdir / f"ingest-{n}.log" for n in range(1, args.controllers)]
        deadline = time.monotonic() + 60
        for log in logs:
            while "telemetry to InfluxDB" not in log.read_text():
                procs.check()
                if time.monotonic() > deadline:
                    raise SystemExit(f"{log.stem} did not start:\n{log.read_text()[-2000:]}")
                await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        ctl_pids = [ctl_pid, *worker_pids]
        print(f"{label}: pids {ctl_pids}; broker pid {broker_pid}", flush=True)

        start_at = time.time() + 3.0  # generators connect first, then start together
        per_gen = -(-args.devices // args.gen_procs)
        gens = []
        for n in range(args.gen_procs):
            count = min(per_gen, args.devices - n * per_gen)
            gens.append(
                await asyncio.create_subprocess_exec(
                    *module_command("bench.ingest"),
                    "--generator",
                    "--port",
                    str(port),
                    "--secrets",
                    str(workdir / "secrets.json"),
                    "--first",
                    str(1 + n * per_gen),
                    "--count",
                    str(count),
                    "--rate",
                    str(args.rate * count / args.devices),
                    "--seconds",
                    str(args.seconds),
                    "--start-at",
                    str(start_at),
                    stdout=asyncio.subprocess.PIPE,
                    stdin=asyncio.subprocess.PIPE,
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
                )
            )
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.monotonic()
        ctl_cpu0 = [cpu_seconds(pid) for pid in ctl_pids]
        cpu0 = {"vm": cpu_seconds(vm_pid)}
        if broker_pid:
            cpu0["broker"] = cpu_seconds(broker_pid)
        sent = 0
        gen_seconds = 0.0
        for gen in gens:
            assert gen.stdout is not None
            line = await gen.stdout.readline()
            if not line:
                raise SystemExit(f"a load generator failed ({await gen.wait()})")
            report = json.loads(line)
            sent += report["sent"]
            gen_seconds = max(gen_seconds, report["seconds"])
        t_sent = time.monotonic()
        # Wait until the database holds every message, or until it stops growing.
        stored, last_change, t_done = 0, time.monotonic(), time.monotonic()
        while stored < sent and time.monotonic() - last_change < args.settle:
            await asyncio.sleep(0.5)
            count = await asyncio.to_thread(vm_count, vm_url)
            if count != stored:
                stored, last_change, t_done = count, time.monotonic(), time.monotonic()
        for gen in gens:
            await gen.communicate(b"")  # close stdin: the generators disconnect
        ctl_cpus = [cpu_seconds(pid) - c0 for pid, c0 in zip(ctl_pids, ctl_cpu0, strict=True)]
        cpu = {"ctl": sum(ctl_cpus), "vm": cpu_seconds(vm_pid) - cpu0["vm"]}
        if broker_pid:
            cpu["broker"] = cpu_seconds(broker_pid) - cpu0["broker"]
        elapsed = t_done - t0
        throughput = stored / elapsed if elapsed > 0 else 0.0
        target = 5000 if args.broker == "mosquitto" else 2000
        lost = sent - stored
        print(
            f"sent {sent} telemetry messages from {args.devices} devices in {gen_seconds:.1f}s "
            f"(offered {sent / gen_seconds:.0f} msg/s); stored {stored}; lost {lost}; "
            f"all stored {t_done - t_sent:.1f}s after the last was sent (includes the "
            f"database's own delay before a write is readable, and polling every 0.5s)"
        )
        # What the busiest controller process could take on a core of its own, times their
        # number (the broker splits evenly): wall-clock throughput on a shared machine says
        # more about the other load than about the controllers.
        by_cpu = stored / max(max(ctl_cpus), 1e-9)
        print(
            f"{label}: {cpu['ctl']:.2f} CPU s = {cpu['ctl'] / max(stored, 1) * 1000:.3f} "
            f"CPU s per 1,000 messages ({cpu['ctl'] / elapsed * 100:.0f}% of a core; per "
            f"process {', '.join(f'{c:.2f}' for c in ctl_cpus)} CPU s); "
            f"peak RSS {max(peak_rss_mib(pid) for pid in ctl_pids):.0f} MiB; "
            f"capacity by CPU {by_cpu:.0f} msg/s"
        )
        others = ", ".join(f"{k} {v:.2f} CPU s" for k, v in cpu.items() if k != "ctl")
        print(f"other processes: {others}")
        print(
            f"RESULT broker={args.broker} devices={args.devices} offered_msg_s={args.rate} "
            f"end_to_end_msg_s={throughput:.0f} lost={lost} target_msg_s={target} "
            f"controller_cpu_s_per_1000={cpu['ctl'] / max(stored, 1) * 1000:.3f} "
            f"controller_max_msg_s_by_cpu={by_cpu:.0f} controllers={len(ctl_pids)}"
        )
        return {
            "throughput": throughput,
            "lost": lost,
            "cpu_per_1000": cpu["ctl"] / max(stored, 1) * 1000,
            "by_cpu": by_cpu,
        }
    finally:
        await procs.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--broker", choices=["embedded", "embedded-split", "mosquitto"], default="embedded"
    )
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument(
        "--no-ha", action="store_true", help="controller without its Home Assistant part"
    )
    parser.add_argument("--rate", type=float, default=None, help="offered msg/s (default: target)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--gen-procs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--flush-interval-ms", type=int, default=200)
    parser.add_argument("--settle", type=float, default=15.0, help="give up after no progress")
    parser.add_argument("--keep", action="store_true", help="keep logs and work dir")
    parser.add_argument(
        "--controllers",
        type=int,
        default=1,
        help="mosquitto: controller processes sharing the ingest (the controller and N-1 "
        "`fleet ingest`)",
    )
    parser.add_argument(
        "--compare-shared",
        action="store_true",
        help="mosquitto: one controller, then two sharing the ingest, in one run",
    )
    # load-generator mode (internal)
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--secrets", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generator:
        generate(args)
        return
    if args.rate is None:
        args.rate = 5000.0 if args.broker == "mosquitto" else 2000.0
    if (args.controllers > 1 or args.compare_shared) and args.broker != "mosquitto":
        parser.error("--controllers and --compare-shared need --broker mosquitto")
    if not args.compare_shared:
        asyncio.run(run(args))
        return
    runs = {}
    for n in (1, 2):
        print(f"--- {n} controller process{'es' if n > 1 else ''}", flush=True)
        runs[n] = asyncio.run(run(argparse.Namespace(**{**vars(args), "controllers": n})))
    one, two = runs[1], runs[2]
    print(
        f"COMPARE end_to_end_msg_s {one['throughput']:.0f} -> {two['throughput']:.0f} "
        f"({two['throughput'] / max(one['throughput'], 1e-9):.2f}x); capacity by CPU "
        f"{one['by_cpu']:.0f} -> {two['by_cpu']:.0f} ({two['by_cpu'] / one['by_cpu']:.2f}x, "
        f"target 1.8x); CPU s per 1,000 messages {one['cpu_per_1000']:.3f} -> "
        f"{two['cpu_per_1000']:.3f}; lost {one['lost']:.0f} / {two['lost']:.0f}"
    )


if __name__ == "__main__":
    main()
