"""The ACL: unit rules, then the same rules enforced by real amqtt and Mosquitto brokers."""

from __future__ import annotations

import pytest

from fleet.auth import (
    HOMEASSISTANT_API_OPS,
    Acl,
    Credential,
    Role,
    filter_covers,
    hash_secret,
    split_filter,
)
from fleet.protocol.messages import ApiOp
from fleet.protocol.topics import TopicKind, Topics
from tests.support.brokers import (
    BrokerHandle,
    collect,
    connect_and_drop,
    mqtt_client,
    subscribe_failed,
    subscribe_forbidden,
)

P = "fleet/v1"
HASH = hash_secret("x", 1)


def cred(username: str, role: Role, groups: list[str] | None = None) -> Credential:
    return Credential(username=username, role=role, hash=HASH, groups=groups or [])


@pytest.fixture
def acl() -> Acl:
    return Acl(Topics(P))


DEV = cred("dev-1", Role.DEVICE, ["kitchen"])
CTL = cred("controller", Role.CONTROLLER)
HA = cred("homeassistant", Role.HOMEASSISTANT)


# --- filter containment -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "sub", "covered"),
    [
        ("a/#", "a/b/c", True),
        ("a/#", "a", True),
        ("a/#", "a/+/#", True),
        ("a/#", "#", False),
        ("a/#", "+/b", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/+/c", True),
        ("a/+/c", "a/#", False),
        ("a/+/c", "a/+/+", False),
        ("a/+/c", "a/b/c/d", False),
        ("a/+/c", "a/b", False),
        ("a/b", "a/b", True),
        ("a/b", "a/+", False),
        ("a/b", "a/b/#", False),
    ],
)
def test_filter_covers(pattern: str, sub: str, covered: bool) -> None:
    assert filter_covers(split_filter(pattern), split_filter(sub)) is covered


# --- devices --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["status", "state", "ack", "tele"])
def test_device_publishes_its_own_reports(acl: Acl, kind: str) -> None:
    assert acl.allows(DEV, "publish", f"{P}/dev/dev-1/{kind}")
    assert not acl.allows(DEV, "publish", f"{P}/dev/dev-2/{kind}")


@pytest.mark.parametrize("kind", ["desired", "cmd", "ann"])
def test_device_never_publishes_its_inboxes(acl: Acl, kind: str) -> None:
    assert not acl.allows(DEV, "publish", f"{P}/dev/dev-1/{kind}")


def test_device_meeting_signalling(acl: Acl) -> None:
    assert acl.allows(DEV, "publish", f"{P}/meet/dev-1/up")
    assert not acl.allows(DEV, "publish", f"{P}/meet/dev-2/up")
    assert not acl.allows(DEV, "publish", f"{P}/meet/dev-1/down")
    for action in ("subscribe", "receive"):
        assert acl.allows(DEV, action, f"{P}/meet/dev-1/down")
        assert not acl.allows(DEV, action, f"{P}/meet/dev-2/down")
        assert not acl.allows(DEV, action, f"{P}/meet/dev-1/up")


@pytest.mark.parametrize("action", ["subscribe", "receive"])
def test_device_reads_only_its_inboxes_and_groups(acl: Acl, action: str) -> None:
    allowed = [
        f"{P}/dev/dev-1/desired",
        f"{P}/dev/dev-1/cmd",
        f"{P}/dev/dev-1/ann",
        f"{P}/grp/all/desired",
        f"{P}/grp/kitchen/desired",
    ]
    refused = [
        f"{P}/dev/dev-2/desired",
        f"{P}/dev/dev-2/cmd",
        f"{P}/dev/dev-2/ann",
        f"{P}/dev/dev-1/state",
        f"{P}/dev/dev-2/state",
        f"{P}/grp/garden/desired",
        f"{P}/api/result",
        "homeassistant/status",
        "other/v1/dev/dev-1/desired",
    ]
    for topic in allowed:
        assert acl.allows(DEV, action, topic), topic
    for topic in refused:
        assert not acl.allows(DEV, action, topic), topic


@pytest.mark.parametrize(
    "topic_filter",
    [f"{P}/dev/dev-1/+", f"{P}/dev/dev-1/#", f"{P}/grp/+/desired", f"{P}/#", "#", "+/+/+/+"],
)
def test_device_subscriptions_are_exact(acl: Acl, topic_filter: str) -> None:
    assert not acl.allows(DEV, "subscribe", topic_filter)


def test_device_groups_come_from_its_credential(acl: Acl) -> None:
    topic = f"{P}/grp/garden/desired"
    assert not acl.allows(DEV, "receive", topic)
    moved = cred("dev-1", Role.DEVICE, ["garden"])
    assert acl.allows(moved, "receive", topic)
    assert not acl.allows(moved, "receive", f"{P}/grp/kitchen/desired")
    assert acl.allows(DEV, "receive", f"{P}/grp/kitchen/desired")  # cache keyed on groups


def test_prefix_is_part_of_every_rule() -> None:
    acl = Acl(Topics("site-a/v2"))
    assert acl.allows(DEV, "publish", "site-a/v2/dev/dev-1/state")
    assert not acl.allows(DEV, "publish", f"{P}/dev/dev-1/state")
    assert acl.allows(CTL, "publish", "site-a/v2/dev/dev-9/desired")
    assert not acl.allows(CTL, "publish", f"{P}/dev/dev-9/desired")


# --- controller ---------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["publish", "subscribe", "receive"])
def test_controller_owns_the_prefix_and_homeassistant(acl: Acl, action: str) -> None:
    for topic in (
        f"{P}/dev/dev-1/desired",
        f"{P}/grp/all/desired",
        f"{P}/api/result",
        "homeassistant/sensor/x/config",
    ):
        assert acl.allows(CTL, action, topic), topic
    for topic in ("other/v1/dev/dev-1/desired", "homeassistantx/y", "$SYS/broker/uptime"):
        assert not acl.allows(CTL, action, topic), topic


def test_controller_wildcards_stay_inside(acl: Acl) -> None:
    for ok in (f"{P}/#", f"{P}/dev/+/state", "homeassistant/#", f"{P}/+/+/+"):
        assert acl.allows(CTL, "subscribe", ok), ok
    for bad in ("#", "+/v1/#", "fleet/#", "+/#", "+/status"):
        assert not acl.allows(CTL, "subscribe", bad), bad


# --- home assistant -----------------------------------------------------------------------------


def test_homeassistant_publishes_meeting_requests_and_entity_commands_only(acl: Acl) -> None:
    for op in ApiOp:
        allowed = op in HOMEASSISTANT_API_OPS
        assert acl.allows(HA, "publish", f"{P}/api/{op.value}") is allowed, op
    assert {op.value for op in HOMEASSISTANT_API_OPS} == {
        *("join-all", "leave-all", "join", "leave", "announce", "dnd"),
        *("call", "answer", "hangup"),
    }
    assert acl.allows(HA, "publish", "homeassistant/status")
    assert acl.allows(HA, "publish", f"{P}/ha/fleet/join_all/set")
    assert acl.allows(HA, "publish", f"{P}/ha/dev/dev-1/meeting/set")
    for bad in (
        f"{P}/api/result",
        f"{P}/api/reboot-everything",
        f"{P}/api/cmd",
        f"{P}/api/room-rm",
        # the controller's state docs and availability: Home Assistant reads, never writes them
        f"{P}/ha/dev/dev-1/state",
        f"{P}/ha/fleet/state",
        f"{P}/ha/status",
        f"{P}/ha/dev/dev-1/meeting/set/more",
        "homeassistant/device/x/config",
        f"{P}/dev/dev-1/desired",
        f"{P}/dev/dev-1/cmd",
        f"{P}/grp/all/desired",
        f"{P}/dev/dev-1/state",
        "homeassistant/sensor/x/config",
    ):
        assert not acl.allows(HA, "publish", bad), bad


@pytest.mark.parametrize("action", ["subscribe", "receive"])
def test_homeassistant_reads(acl: Acl, action: str) -> None:
    for ok in (
        "homeassistant/status",
        f"{P}/dev/dev-1/status",
        f"{P}/dev/dev-1/state",
        f"{P}/dev/dev-1/tele",
        f"{P}/api/result",
        f"{P}/ha/anything/below",
    ):
        assert acl.allows(HA, action, ok), ok
    for bad in (
        f"{P}/dev/dev-1/desired",
        f"{P}/dev/dev-1/cmd",
        f"{P}/dev/dev-1/ack",
        f"{P}/meet/dev-1/down",
        f"{P}/api/join-all",
    ):
        assert not acl.allows(HA, action, bad), bad


def test_homeassistant_wildcards_only_over_readable_topics(acl: Acl) -> None:
    for ok in (f"{P}/dev/+/state", f"{P}/dev/+/status", "homeassistant/#", f"{P}/ha/#"):
        assert acl.allows(HA, "subscribe", ok), ok
    for bad in (f"{P}/#", f"{P}/dev/+/+", f"{P}/dev/#", f"{P}/api/+", "#", "+/v1/dev/+/state"):
        assert not acl.allows(HA, "subscribe", bad), bad


# --- nobody ---------------------------------------------------------------------------------------


def test_anonymous_and_unknown_roles_get_nothing(acl: Acl) -> None:
    odd = Credential.model_construct(username="x", role="visitor", hash=HASH, groups=[])
    for who in (None, odd):
        for action in ("publish", "subscribe", "receive"):
            assert not acl.allows(who, action, f"{P}/dev/x/state")
            assert not acl.allows(who, action, "homeassistant/status")


def test_empty_topic_is_refused(acl: Acl) -> None:
    assert not acl.allows(CTL, "publish", "")


# --- enforced by both brokers -----------------------------------------------------------------


async def test_device_cannot_write_another_devices_topics(any_broker: BrokerHandle) -> None:
    t = any_broker.topics
    s1 = any_broker.add_device("dev-a")
    any_broker.add_device("dev-b")
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    async with (
        mqtt_client(any_broker, "ctl", ctl, client_id="ctl-watch") as watcher,
        mqtt_client(any_broker, "dev-a", s1) as dev,
    ):
        await watcher.subscribe(t.everything, qos=1)
        for topic in (t.state("dev-b"), t.desired("dev-b"), t.desired("dev-a"), t.cmd("dev-b")):
            await dev.publish(topic, b'{"rev":99}', qos=1, retain=True)
        await dev.publish(t.group_desired("all"), b'{"rev":99}', qos=1, retain=True)
        await dev.publish(t.meet_up("dev-b"), b'{"type":"leave"}', qos=1)
        await dev.publish(t.api("join-all"), b"{}", qos=1)
        await dev.publish(t.state("dev-a"), b'{"rev":1}', qos=1, retain=True)  # the marker
        got = await collect(watcher, until_topic=t.state("dev-a"))
    assert [(m.topic.value, m.payload) for m in got] == [(t.state("dev-a"), b'{"rev":1}')]


async def test_device_cannot_subscribe_to_another_devices_inbox(any_broker: BrokerHandle) -> None:
    t = any_broker.topics
    sa = any_broker.add_device("dev-a")
    any_broker.add_device("dev-b")
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    async with (
        mqtt_client(any_broker, "ctl", ctl, client_id="ctl-1") as controller,
        mqtt_client(any_broker, "dev-a", sa) as dev,
    ):
        await controller.publish(t.desired("dev-b"), b'{"rev":5}', qos=1, retain=True)
        await subscribe_forbidden(any_broker, dev, t.cmd("dev-b"))
        await subscribe_forbidden(any_broker, dev, t.desired("dev-b"))
        await subscribe_forbidden(any_broker, dev, f"{t.prefix}/dev/+/cmd")
        await subscribe_forbidden(any_broker, dev, f"{t.prefix}/dev/dev-a/#")
        assert not subscribe_failed(await dev.subscribe(t.cmd("dev-a"), qos=1))
        await controller.publish(t.cmd("dev-b"), b'{"id":"x","op":"reboot"}', qos=1)
        await controller.publish(t.cmd("dev-a"), b'{"id":"m","op":"ping"}', qos=1)  # marker
        got = await collect(dev, until_topic=t.cmd("dev-a"))
    assert [m.topic.value for m in got] == [t.cmd("dev-a")]


async def test_device_reads_its_groups_desired_docs_only(any_broker: BrokerHandle) -> None:
    t = any_broker.topics
    secret = any_broker.add_device("dev-a", groups=["kitchen"])
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    async with mqtt_client(any_broker, "ctl", ctl, client_id="ctl-1") as controller:
        for group in ("all", "kitchen", "garden"):
            await controller.publish(
                t.group_desired(group), f'{{"rev":1,"g":"{group}"}}', qos=1, retain=True
            )
        async with mqtt_client(any_broker, "dev-a", secret) as dev:
            await subscribe_forbidden(any_broker, dev, t.group_desired("garden"))
            assert not subscribe_failed(await dev.subscribe(t.group_desired("all"), qos=1))
            assert not subscribe_failed(await dev.subscribe(t.group_desired("kitchen"), qos=1))
            await controller.publish(t.group_desired("garden"), b'{"rev":2}', qos=1, retain=True)
            await controller.publish(t.group_desired("kitchen"), b'{"rev":2}', qos=1, retain=True)
            got = await collect(dev, until_topic=t.group_desired("kitchen"))
            while got[-1].payload != b'{"rev":2}':  # the retained rev 1 came first
                got += await collect(dev, until_topic=t.group_desired("kitchen"))
    topics = [m.topic.value for m in got]
    assert t.group_desired("garden") not in topics
    assert set(topics) == {t.group_desired("all"), t.group_desired("kitchen")}


async def test_homeassistant_cannot_write_desired_state(any_broker: BrokerHandle) -> None:
    t = any_broker.topics
    ha = any_broker.add_user("ha", Role.HOMEASSISTANT, secret="a chosen passphrase")
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    async with (
        mqtt_client(any_broker, "ctl", ctl, client_id="ctl-watch") as watcher,
        mqtt_client(any_broker, "ha", ha, client_id="ha-1") as hass,
    ):
        await watcher.subscribe(t.everything, qos=1)
        await hass.publish(t.desired("dev-x"), b'{"rev":1}', qos=1, retain=True)
        await hass.publish(t.group_desired("all"), b'{"rev":1}', qos=1, retain=True)
        await hass.publish(t.cmd("dev-x"), b'{"id":"1","op":"reboot"}', qos=1)
        await hass.publish(t.api_result, b'{"op":"join","ok":true}', qos=1)
        await hass.publish(t.api("join-all"), b'{"room":"r1"}', qos=1)  # allowed: the marker
        got = await collect(watcher, until_topic=t.api("join-all"))
    assert [m.topic.value for m in got] == [t.api("join-all")]


async def test_homeassistant_reads_through_allowed_wildcards_only(
    any_broker: BrokerHandle,
) -> None:
    t = any_broker.topics
    ha = any_broker.add_user("ha", Role.HOMEASSISTANT)
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    async with (
        mqtt_client(any_broker, "ctl", ctl, client_id="ctl-1") as controller,
        mqtt_client(any_broker, "ha", ha, client_id="ha-1") as hass,
    ):
        await controller.publish(t.desired("dev-x"), b'{"rev":1}', qos=1, retain=True)
        await subscribe_forbidden(any_broker, hass, t.everything)
        await subscribe_forbidden(any_broker, hass, f"{t.prefix}/dev/+/+")
        assert not subscribe_failed(await hass.subscribe(t.all_devices(TopicKind.STATE), qos=1))
        await controller.publish(t.cmd("dev-x"), b'{"id":"1","op":"ping"}', qos=1)
        await controller.publish(t.group_desired("all"), b'{"rev":2}', qos=1)
        await controller.publish(t.state("dev-x"), b'{"rev":1}', qos=1)  # readable: the marker
        got = await collect(hass, until_topic=t.state("dev-x"))
    assert {m.topic.value for m in got} == {t.state("dev-x")}


async def test_will_on_a_foreign_topic_never_fires(any_broker: BrokerHandle) -> None:
    """amqtt refuses the CONNECT; Mosquitto 2.0 accepts it and drops the will when it fires."""
    t = any_broker.topics
    secret = any_broker.add_device("dev-a")
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    async with mqtt_client(any_broker, "ctl", ctl, client_id="ctl-watch") as watcher:
        await watcher.subscribe(t.everything, qos=1)
        rc = await connect_and_drop(
            any_broker, "dev-a", secret, t.status("dev-b"), b'{"online":false}'
        )
        if any_broker.kind == "amqtt":
            assert rc == 5  # not authorised
        # Its own status as will is fine, and fires.
        assert await connect_and_drop(any_broker, "dev-a", secret, t.status("dev-a"), b"{}") == 0
        got = await collect(watcher, until_topic=t.status("dev-a"))
        while not any(bytes(m.payload) == b"{}" for m in got):  # its own will, after the
            got += await collect(watcher, until_topic=t.status("dev-a"))  # broker's offline
    # Never on dev-b's status; on dev-a's: its will, and the broker's offline status at
    # the end of each of its connections (the broker has the last word on presence).
    assert {m.topic.value for m in got} == {t.status("dev-a")}
    assert {bytes(m.payload) for m in got} <= {b"{}", b'{"online":false}'}


# --- a person's browser (web role, §11.2) ------------------------------------------------------


def test_web_user_has_its_meet_topics_its_ops_and_the_read_only_fleet_view(acl: Acl) -> None:
    import time

    from fleet.auth import WEB_API_OPS

    web = Credential(username="web-1a2b", role=Role.WEB, hash=HASH, expires=time.time() + 60)
    assert acl.allows(web, "publish", f"{P}/meet/web-1a2b/up")
    # The console's ops, on `api/{op}` and on its own request topic; no other op.
    assert {op.value for op in WEB_API_OPS} == {
        *("join-all", "leave-all", "join", "leave", "rooms", "sessions", "say"),
        *("announce", "dnd", "call", "hangup"),
    }
    for op in ApiOp:
        allowed = op in WEB_API_OPS
        assert acl.allows(web, "publish", f"{P}/api/{op.value}") is allowed, op
        assert acl.allows(web, "publish", f"{P}/api/by/web-1a2b/{op.value}") is allowed, op
        assert not acl.allows(web, "publish", f"{P}/api/by/web-9999/{op.value}"), op
    for topic in (
        f"{P}/meet/web-1a2b/down",
        f"{P}/dev/dev-1/status",
        f"{P}/dev/+/state",
        f"{P}/dev/+/tele",
        f"{P}/api/result",
        f"{P}/events",
    ):
        assert acl.allows(web, "subscribe", topic), topic
        assert acl.allows(web, "receive", topic.replace("+", "dev-2")), topic
    for action, topic in (
        ("publish", f"{P}/meet/web-9999/up"),  # another participant
        ("publish", f"{P}/meet/dev-1/up"),
        ("publish", f"{P}/dev/dev-1/state"),  # no forged reports
        ("publish", f"{P}/api/cmd"),  # no reboot or OTA
        ("publish", f"{P}/api/room-rm"),
        ("publish", f"{P}/api/web-login"),  # no minting more
        ("publish", f"{P}/dev/dev-1/desired"),
        ("subscribe", f"{P}/meet/dev-1/down"),  # nobody else's signalling
        ("subscribe", f"{P}/meet/+/down"),
        ("subscribe", f"{P}/dev/dev-1/cmd"),
        ("subscribe", f"{P}/dev/+/desired"),
        ("subscribe", f"{P}/#"),
        ("subscribe", "homeassistant/#"),
    ):
        assert not acl.allows(web, action, topic), (action, topic)  # type: ignore[arg-type]
    # Expired: nothing at all, though still connected.
    lapsed = web.model_copy(update={"expires": time.time() - 1})
    assert not acl.allows(lapsed, "publish", f"{P}/meet/web-1a2b/up")
    assert not acl.allows(lapsed, "receive", f"{P}/meet/web-1a2b/down")
    assert not acl.allows(lapsed, "receive", f"{P}/dev/dev-1/status")


def test_only_web_users_have_an_expiry() -> None:
    with pytest.raises(ValueError, match="expiry"):
        Credential(username="web-1", role=Role.WEB, hash=HASH)
    with pytest.raises(ValueError, match="expiry"):
        Credential(username="ha", role=Role.HOMEASSISTANT, hash=HASH, expires=1.0)
