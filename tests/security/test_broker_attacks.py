"""Attacks on the brokers: client ids, resumed sessions, fake devices,
message sizes, sockets that never CONNECT, failed-login floods, subscription floods."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import string
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio

import broker.amqtt.embedded as embedded
from broker.amqtt.admission import Admission
from broker.amqtt.embedded import EmbeddedBroker
from broker.amqtt.fixes import FilterTrie, TopicTree
from fleet.auth import Credential, CredentialStore, Role, hash_secret, split_filter
from fleet.auth.clientids import may_use, owner
from fleet.mqtt import BrokerUrl, payload_bytes
from fleet.protocol import decode
from fleet.protocol.messages import MAX_PAYLOAD_BYTES, ApiOp, ApiRequest, Status
from tests.support.brokers import (
    BrokerHandle,
    collect,
    free_port,
    mqtt_client,
    subscribe_failed,
)
from tests.support.packets import mqtt_connect, mqtt_packet
from tests.support.running import controller, one_device, operator, wait_for

# --- 1: client ids belong to one user ---------------------------------------------------------


def test_client_id_owner_is_the_longest_user_name() -> None:
    h = hash_secret("x", 1)
    users = {
        name: Credential(username=name, role=role, hash=h)
        for name, role in [
            ("ctl", Role.CONTROLLER),
            ("ctl-1", Role.CONTROLLER),
            ("ha", Role.HOMEASSISTANT),
            ("ha-box", Role.DEVICE),
        ]
    }
    found = {cid: getattr(owner(cid, users), "username", None) for cid in users}
    assert found == {name: name for name in users}
    for cid, expected in [
        ("ctl-2", "ctl"),
        ("ctl-1-x", "ctl-1"),
        ("ctl-cli-1a2b", "ctl"),
        ("ha-box-2", "ha-box"),
        ("ha-1", "ha"),
        ("fleet-controller", None),
        ("ctlx", None),
        ("", None),
    ]:
        assert getattr(owner(cid, users), "username", None) == expected, cid


async def connect_result(handle: BrokerHandle, user: str, secret: str, client_id: str) -> bool:
    try:
        async with mqtt_client(handle, user, secret, client_id=client_id):
            return True
    except aiomqtt.MqttError:
        return False


async def test_no_user_connects_with_another_users_client_id(any_broker: BrokerHandle) -> None:
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    ha = any_broker.add_user("ha", Role.HOMEASSISTANT)
    dev = any_broker.add_device("ha-box")
    refused = [
        ("ha", ha, "ctl"),  # the controller's session: it would go deaf
        ("ha", ha, "ctl-2"),
        ("ha", ha, "ha-box"),  # a device's session: it would never converge
        ("ha", ha, "ha-box-1"),
        ("ctl", ctl, "ha-box"),
        ("ctl", ctl, "ha"),
        ("ctl", ctl, "fleet-controller"),  # the controller's id on a broker without users
        ("ha-box", dev, "ha-box-2"),  # a device uses its id exactly
    ]
    allowed = [
        ("ctl", ctl, "ctl"),
        ("ctl", ctl, "ctl-2"),
        ("ha", ha, "ha-1"),
        ("ha-box", dev, "ha-box"),
    ]
    got = {(u, cid): await connect_result(any_broker, u, s, cid) for u, s, cid in refused + allowed}
    assert got == {(u, cid): (u, s, cid) in allowed for u, s, cid in refused + allowed}


def test_an_id_that_belongs_to_nobody_is_free_but_for_devices_and_web_users() -> None:
    h = hash_secret("x", 1)
    users = {
        name: Credential(username=name, role=role, hash=h, expires=expires)
        for name, role, expires in [
            ("ctl", Role.CONTROLLER, None),
            ("ha", Role.HOMEASSISTANT, None),
            ("agent-1", Role.AGENT, None),
            ("dev-a", Role.DEVICE, None),
            ("web-1", Role.WEB, 4e9),
        ]
    }
    for name in ("ctl", "ha", "agent-1"):
        assert may_use(users[name], "Xq3Vb9kLm2Pz8RtY5nWc1d", users), name
        for taken in ("fleet-controller", "fleet-controller-2", "dev-a", "web-1", "ctlx-1"):
            expected = taken == "ctlx-1"  # nobody's: 'ctlx' is no user
            assert may_use(users[name], taken, users) is expected, (name, taken)
    assert not may_use(users["ha"], "ctl-2", users)
    for name in ("dev-a", "web-1"):
        assert not may_use(users[name], "Xq3Vb9kLm2Pz8RtY5nWc1d", users), name


def home_assistant_client_id() -> str:
    """What Home Assistant connects with when its client id is left empty: 22 random
    letters and digits."""
    return "".join(random.choices(string.ascii_letters + string.digits, k=22))


async def test_home_assistant_connects_with_its_random_client_id(
    any_broker: BrokerHandle,
) -> None:
    """On its defaults: a random client id, MQTT 5 where the broker speaks it (amqtt
    speaks 3.1.1 only). Ids that belong to someone stay refused to it."""
    ha = any_broker.add_user("ha", Role.HOMEASSISTANT)
    any_broker.add_user("otheruser", Role.HOMEASSISTANT)
    dev = any_broker.add_device("dev-a")
    v5, v311 = aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311
    version = v5 if any_broker.kind == "mosquitto" else v311

    async def connects(username: str, secret: str, client_id: str) -> bool:
        try:
            async with aiomqtt.Client(
                any_broker.host,
                any_broker.port,
                username=username,
                password=secret,
                identifier=client_id,
                protocol=version,
                timeout=10,
            ):
                return True
        except aiomqtt.MqttError:
            return False

    random_id = home_assistant_client_id()
    expected = {
        ("ha", random_id): True,
        ("ha", "ha-x"): True,
        ("ha", "fleet-controller"): False,
        ("ha", "fleet-controller-1"): False,
        ("ha", "dev-a"): False,  # a device's session
        ("ha", "otheruser"): False,  # another user's namespace
        ("ha", "otheruser-x"): False,
        ("dev-a", random_id): False,  # a device uses its id exactly
    }
    secrets = {"ha": ha, "dev-a": dev}
    got = {(u, cid): await connects(u, secrets[u], cid) for u, cid in expected}
    assert got == expected


async def test_a_taken_controller_session_recovers(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    """The controller's own credentials used elsewhere with its client id: the broker closes
    the controller's connection (amqtt used to leave it open and deaf); it reconnects."""
    async with controller(any_broker, tmp_path / "controller.db") as ctl:
        url = BrokerUrl.parse(any_broker.controller_url())
        assert ctl.client_id == url.username
        with contextlib.suppress(aiomqtt.MqttError):  # the controller takes it back
            async with mqtt_client(any_broker, url.username, url.password, client_id=ctl.client_id):
                await wait_for(lambda: not ctl.connected.is_set(), what="the controller notices")
        await wait_for(ctl.connected.is_set, what="the controller reconnects")
        async with operator(any_broker) as fleet, asyncio.timeout(10):
            result = await fleet.request(ApiOp.ROOMS, ApiRequest())
    assert result.ok, result


async def _next_online(client: aiomqtt.Client, topic: str) -> None:
    async with asyncio.timeout(10):
        async for message in client.messages:
            if message.topic.value == topic and decode(Status, payload_bytes(message)).online:
                return


async def test_a_taken_device_session_recovers(any_broker: BrokerHandle) -> None:
    """Its own credentials used elsewhere with its id: the device notices and comes back."""
    t = any_broker.topics
    secret = any_broker.add_device("dev-a")
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    async with mqtt_client(any_broker, "ctl", ctl) as watcher:
        await watcher.subscribe(t.status("dev-a"), qos=1)
        async with one_device(any_broker, "dev-a", secret):
            await _next_online(watcher, t.status("dev-a"))
            with contextlib.suppress(aiomqtt.MqttError):  # the device takes it back
                async with mqtt_client(any_broker, "dev-a", secret):
                    await _next_online(watcher, t.status("dev-a"))  # a new birth
            # Back on its inbox: a ping is answered.
            await watcher.subscribe(t.ack("dev-a"), qos=1)
            await watcher.publish(t.cmd("dev-a"), b'{"id":"p1","op":"ping"}', qos=1)
            got = await collect(watcher, until_topic=t.ack("dev-a"), settle_s=0)
    assert got[-1].topic.value == t.ack("dev-a")


# --- 2: a resumed session passes the read ACL ---------------------------------------------------


async def test_resuming_a_session_replays_only_what_the_user_may_read(
    any_broker: BrokerHandle,
) -> None:
    """A device's persistent session with a queued command; its name then becomes a Home
    Assistant user's, who resumes the session: the command (an OTA URL and token) stays."""
    t = any_broker.topics
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    secret = any_broker.add_device("dev-x")
    async with mqtt_client(any_broker, "dev-x", secret, clean_session=False) as dev:
        await dev.subscribe(t.cmd("dev-x"), qos=1)
        await dev.subscribe(t.group_desired("all"), qos=1)
    async with mqtt_client(any_broker, "ctl", ctl) as controller_client:
        await controller_client.publish(t.cmd("dev-x"), b'{"id":"o1","op":"ota"}', qos=1)
        any_broker.store.remove("dev-x")
        ha = any_broker.add_user("dev-x", Role.HOMEASSISTANT)
        async with mqtt_client(any_broker, "dev-x", ha, clean_session=False) as hass:
            await hass.subscribe(t.api_result, qos=1)
            await controller_client.publish(t.api_result, b"{}", qos=1)  # marker
            got = await collect(hass, until_topic=t.api_result)
    assert [m.topic.value for m in got] == [t.api_result]


# --- 3: device rights for device users only ------------------------------------------------------


async def test_homeassistant_cannot_report_as_a_device_of_its_name(
    any_broker: BrokerHandle,
) -> None:
    t = any_broker.topics
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    ha = any_broker.add_user("ha", Role.HOMEASSISTANT)
    async with (
        mqtt_client(any_broker, "ctl", ctl) as watcher,
        mqtt_client(any_broker, "ha", ha) as hass,
    ):
        await watcher.subscribe(t.everything, qos=1)
        for kind in ("status", "state", "ack", "tele"):
            await hass.publish(f"{t.prefix}/dev/ha/{kind}", b'{"online":true}', qos=1)
        await hass.publish(t.meet_up("ha"), b'{"type":"leave"}', qos=1)
        await watcher.publish(t.api_result, b"{}", qos=1)  # marker
        got = await collect(watcher, until_topic=t.api_result)
    assert [m.topic.value for m in got] == [t.api_result]


# --- 4: 64 KiB -----------------------------------------------------------------------------------


async def test_payloads_over_64_kib_go_nowhere(any_broker: BrokerHandle) -> None:
    t = any_broker.topics
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    secret = any_broker.add_device("dev-a")
    async with (
        mqtt_client(any_broker, "ctl", ctl) as watcher,
        mqtt_client(any_broker, "dev-a", secret) as dev,
    ):
        await watcher.subscribe(t.everything, qos=1)
        await dev.publish(t.tele("dev-a"), b"x" * (MAX_PAYLOAD_BYTES + 1), qos=1, retain=True)
        await dev.publish(t.state("dev-a"), b"y" * MAX_PAYLOAD_BYTES, qos=1)  # at the limit
        got = await collect(watcher, until_topic=t.state("dev-a"))
    assert [(m.topic.value, len(m.payload)) for m in got] == [  # type: ignore[arg-type]
        (t.state("dev-a"), MAX_PAYLOAD_BYTES)
    ]


async def _closed_by_broker(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    """True when the broker closes the socket within the time (EOF or reset)."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def test_a_huge_packet_closes_the_connection_unread(any_broker: BrokerHandle) -> None:
    """A PUBLISH announcing 250 MB: the broker hangs up instead of waiting to buffer it."""
    secret = any_broker.add_device("dev-a")
    reader, writer = await asyncio.open_connection(any_broker.host, any_broker.port)
    try:
        writer.write(mqtt_connect("dev-a", "dev-a", secret))
        assert (await asyncio.wait_for(reader.readexactly(4), 10))[3] == 0
        topic = any_broker.topics.tele("dev-a").encode()
        header = len(topic).to_bytes(2, "big") + topic
        writer.write(mqtt_packet(0x30, header + b"z" * 1000, length=250_000_000))
        await writer.drain()
        assert await _closed_by_broker(reader)
    finally:
        writer.transport.abort()


# --- 5: sockets that never CONNECT, login floods (the embedded broker) -------------------------


def _open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
    return count


async def test_a_socket_without_connect_times_out(
    amqtt_broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "CONNECT_TIMEOUT_S", 0.3)
    reader, writer = await asyncio.open_connection(amqtt_broker.host, amqtt_broker.port)
    try:
        writer.write(b"\x10")  # the start of a CONNECT, never finished
        assert await _closed_by_broker(reader)
    finally:
        writer.transport.abort()


async def test_sockets_closed_before_connect_are_closed_by_the_broker(
    amqtt_broker: BrokerHandle,
) -> None:
    before = _open_sockets()
    for _ in range(20):
        _reader, writer = await asyncio.open_connection(amqtt_broker.host, amqtt_broker.port)
        writer.transport.abort()
    # Our ends are closed at once; the broker's (in this process) must follow.
    await wait_for(lambda: _open_sockets() <= before, what="the broker's ends to close")


async def _connect_from(address: str, port: int, packet: bytes) -> bytes:
    """Send `packet` from source `address`; what comes back before the broker closes."""
    sock = socket.socket()
    sock.bind((address, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(packet)
        got = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5):
                while chunk := await reader.read(4):
                    got += chunk
                    if len(got) >= 4:
                        break
        return got
    finally:
        writer.transport.abort()


@pytest_asyncio.fixture
async def strict_broker(
    creds_store: CredentialStore, topic_prefix: str
) -> AsyncIterator[EmbeddedBroker]:
    admission = Admission(max_pending_per_address=4, failed_logins_per_s=0.01, failed_login_burst=3)
    async with EmbeddedBroker(
        creds_store.path, port=free_port(), prefix=topic_prefix, admission=admission
    ) as broker:
        yield broker


async def test_failed_logins_are_rate_limited_per_address_and_client_id(
    strict_broker: EmbeddedBroker, creds_store: CredentialStore
) -> None:
    secret = creds_store.add("dev-a", Role.DEVICE)
    ops = creds_store.add("ops", Role.CONTROLLER)
    port = strict_broker.port
    wrong = mqtt_connect("dev-a", "dev-a", "wrong")
    for _ in range(3):  # the burst: refused the MQTT way, CONNACK 5
        assert (await _connect_from("127.0.0.1", port, wrong))[3:4] == b"\x05"
    checked = strict_broker.admission.refused
    # Then this client id from this address is refused unchecked, even with the right
    # password...
    right = mqtt_connect("dev-a", "dev-a", secret)
    assert (await _connect_from("127.0.0.1", port, right))[3:4] == b"\x05"
    # ...while a legitimate client on the same address (an operator's CLI) logs in...
    cli = mqtt_connect("ops-cli-1a2b", "ops", ops)
    assert (await _connect_from("127.0.0.1", port, cli))[3:4] == b"\x00"
    # ...and so does the same id from another address.
    assert (await _connect_from("127.0.0.2", port, right))[3:4] == b"\x00"
    assert strict_broker.admission.refused == checked  # nobody was hung up on at accept


async def test_idle_sockets_per_address_are_bounded(
    strict_broker: EmbeddedBroker, creds_store: CredentialStore
) -> None:
    secret = creds_store.add("dev-a", Role.DEVICE)
    idle = [await asyncio.open_connection("127.0.0.1", strict_broker.port) for _ in range(4)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", strict_broker.port)
        assert await _closed_by_broker(reader)  # a fifth idle one
        writer.transport.abort()
        ok = await _connect_from(
            "127.0.0.2", strict_broker.port, mqtt_connect("dev-a", "dev-a", secret)
        )
        assert ok[3:4] == b"\x00"
    finally:
        for _r, w in idle:
            w.transport.abort()
    await wait_for(
        lambda: strict_broker.admission.connections == 0, what="idle sockets counted out"
    )


# --- 6: subscriptions ---------------------------------------------------------------------------


async def test_subscriptions_per_client_are_bounded(amqtt_broker: BrokerHandle) -> None:
    t = amqtt_broker.topics
    ctl = amqtt_broker.add_user("ctl", Role.CONTROLLER)
    limit = embedded.MAX_SUBSCRIPTIONS_PER_CLIENT
    async with mqtt_client(amqtt_broker, "ctl", ctl) as client:
        codes = await client.subscribe([(f"{t.prefix}/x{i}/+/#", 0) for i in range(limit)])
        assert not any(subscribe_failed([c]) for c in codes)
        assert subscribe_failed(await client.subscribe(f"{t.prefix}/one-more/#", qos=0))
        # Holding one again is no new subscription.
        assert not subscribe_failed(await client.subscribe(f"{t.prefix}/x0/+/#", qos=1))


async def test_delivery_cost_ignores_other_clients_filters(
    amqtt_broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client holding many wildcard filters adds no matching work to others' messages."""
    t = amqtt_broker.topics
    ctl = amqtt_broker.add_user("ctl", Role.CONTROLLER)
    secret = amqtt_broker.add_device("dev-a")
    backend = amqtt_broker.backend
    inner = backend.broker.amqtt_broker  # type: ignore[attr-defined]
    calls = 0
    matches = inner._matches

    def counting(topic: str, a_filter: str) -> bool:
        nonlocal calls
        calls += 1
        return matches(topic, a_filter)

    monkeypatch.setattr(inner, "_matches", counting)
    async with (
        mqtt_client(amqtt_broker, "ctl", ctl, client_id="ctl-hog") as hog,
        mqtt_client(amqtt_broker, "ctl", ctl, client_id="ctl-watch") as watcher,
        mqtt_client(amqtt_broker, "dev-a", secret) as dev,
    ):
        await hog.subscribe([(f"{t.prefix}/dev/+/x{i}", 0) for i in range(200)])
        await watcher.subscribe(f"{t.prefix}/dev/+/state", qos=1)
        calls = 0
        await dev.publish(t.state("dev-a"), b"{}", qos=1)
        await collect(watcher, until_topic=t.state("dev-a"), settle_s=0)
    assert calls <= 2  # the one matching filter, not the hog's 200


def test_filter_trie_matches_like_the_mqtt_rule() -> None:
    rng = random.Random(7)
    words = ["a", "b", "c"]
    filters = {
        "/".join(rng.choice([*words, "+"]) for _ in range(rng.randint(1, 4)))
        + rng.choice(["", "/#"])
        for _ in range(300)
    } | {"#", "+", "a/#"}
    trie = FilterTrie()
    for f in filters:
        trie.add(f)
    removed = set(rng.sample(sorted(filters), 100))
    for f in removed:
        trie.discard(f)
    kept = filters - removed

    def matches(topic: str, f: str) -> bool:
        levels, parts = split_filter(f), split_filter(topic)
        for i, level in enumerate(levels):
            if level == "#":
                return True
            if i >= len(parts) or level not in ("+", parts[i]):
                return False
        return len(levels) == len(parts)

    topics = {"/".join(rng.choice(words) for _ in range(rng.randint(1, 5))) for _ in range(300)}
    tree = TopicTree()
    for topic in topics:
        tree.add(topic)
    for topic in rng.sample(sorted(topics), 100):
        tree.discard(topic)
        topics.discard(topic)
    for _ in range(500):
        topic = "/".join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        assert sorted(trie.match(topic)) == sorted(f for f in kept if matches(topic, f)), topic
    for f in kept:
        assert sorted(tree.matching(f)) == sorted(t for t in topics if matches(t, f)), f


async def test_a_wildcard_subscription_looks_only_at_retained_topics_it_can_match(
    amqtt_broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """amqtt compared every new wildcard filter with every retained topic: a client with
    10,000 filters made the broker compare 10,000 x (the fleet's retained messages)."""
    t = amqtt_broker.topics
    ctl = amqtt_broker.add_user("ctl", Role.CONTROLLER)
    inner = amqtt_broker.backend.broker.amqtt_broker  # type: ignore[attr-defined]
    async with mqtt_client(amqtt_broker, "ctl", ctl) as client:
        for i in range(100):
            await client.publish(t.state(f"dev-{i}"), b"{}", qos=1, retain=True)
        calls = 0
        matches = inner._matches

        def counting(topic: str, a_filter: str) -> bool:
            nonlocal calls
            calls += 1
            return matches(topic, a_filter)

        monkeypatch.setattr(inner, "_matches", counting)
        await client.subscribe(f"{t.prefix}/ha/+/x/#", qos=0)
        await client.subscribe(f"{t.prefix}/dev/dev-7/+", qos=1)
        got = await collect(client, until_topic=t.state("dev-7"), settle_s=0)
    assert [m.topic.value for m in got] == [t.state("dev-7")]
    assert calls <= 2  # the one retained topic each filter can match, not all 100


# --- 13: credential writes off the event loop -----------------------------------------------


async def test_controller_rewrites_credentials_off_its_event_loop(
    amqtt_broker: BrokerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """set_groups rewrites the whole credentials file (117 ms at 20,000 users)."""
    secret = amqtt_broker.add_device("dev-a")
    threads: list[int] = []
    set_groups = CredentialStore.set_groups

    def recording(self: CredentialStore, username: str, groups: list[str]) -> Credential:
        threads.append(threading.get_ident())
        return set_groups(self, username, groups)

    monkeypatch.setattr(CredentialStore, "set_groups", recording)
    async with (
        controller(amqtt_broker, tmp_path / "controller.db"),
        one_device(amqtt_broker, "dev-a", secret),
        operator(amqtt_broker) as fleet,
    ):
        request = ApiRequest(device="dev-a", cmd_op="set_groups", args={"groups": ["hall"]})
        result = await fleet.request(ApiOp.CMD, request)
    assert result.ok, result
    assert threads
    assert threading.get_ident() not in threads
    assert amqtt_broker.store.get("dev-a").groups == ["hall"]  # type: ignore[union-attr]


def test_a_burst_of_failed_logins_locks_a_client_id_out_briefly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("broker.amqtt.admission.time.monotonic", lambda: now[0])
    admission = Admission(failed_logins_per_s=2.0, failed_login_burst=3)
    for _ in range(50):  # one client admitted 50 times at once, all with a wrong password
        assert admission.admit("10.0.0.9")
    for _ in range(50):
        admission.connected("10.0.0.9")
        admission.login_failed("10.0.0.9", "dev-1")
        admission.closed()
    assert admission.admit("10.0.0.9")  # the socket is accepted: its CONNECT names its id
    assert not admission.may_try_login("10.0.0.9", "dev-1")
    assert admission.may_try_login("10.0.0.9", "ops-cli-1")  # another id, same address
    assert admission.may_try_login("10.0.0.10", "dev-1")  # the same id elsewhere
    now[0] += 0.5  # one login's worth of refill
    assert admission.may_try_login("10.0.0.9", "dev-1")


def test_sockets_in_all_stay_below_the_bound() -> None:
    admission = Admission(max_connections=3, max_pending_per_address=10)
    assert all(admission.admit(f"10.0.0.{i}") for i in range(3))
    assert not admission.admit("10.0.0.99")
    admission.closed()
    assert admission.admit("10.0.0.99")
    assert admission.refused == 1
