"""What the controller knows of each device (`devices` op, docs/protocol.md §9.1): a
device's last birth outlives its will, and the inventory pages stay inside a payload."""

from __future__ import annotations

from fleet.controller.inventory import inventory
from fleet.protocol import TopicKind, encode
from fleet.protocol.messages import (
    MAX_LISTED_DEVICES,
    MAX_PAYLOAD_BYTES,
    ApiRequest,
    Status,
)
from fleet.registry import Registry


def _birth(groups: list[str]) -> Status:
    return Status(online=True, fw="1.4.2", hw="esp32-s3-box-3", groups=groups)


def test_a_will_keeps_the_last_birth() -> None:
    registry = Registry()
    registry.update(TopicKind.STATUS, "dev-1", _birth(["kitchen"]))
    assert registry.update(TopicKind.STATUS, "dev-1", Status(online=False))  # the will
    rec = registry.devices["dev-1"]
    assert not rec.online
    assert (rec.fw, rec.hw, rec.groups) == ("1.4.2", "esp32-s3-box-3", ["kitchen"])
    # Still in its group for the controller's targets (§9.1: its last birth's groups).
    assert [r.id for r in registry.targets("kitchen")] == ["dev-1"]
    # A new birth replaces what it is.
    registry.update(TopicKind.STATUS, "dev-1", _birth([]))
    assert registry.devices["dev-1"].groups == []
    assert registry.targets("kitchen") == []


def test_inventory_pages_cover_every_device_once_within_a_payload() -> None:
    registry = Registry()
    # Long group names make the byte budget, not the count, end a page.
    groups = [f"{'g' * 60}-{i:02d}" for i in range(32)]
    ids = [f"dev-{i:04d}" for i in range(600)]
    for i, device_id in enumerate(ids):
        registry.update(TopicKind.STATUS, device_id, _birth(groups if i % 2 else []))
        if i % 3 == 0:
            registry.update(TopicKind.STATUS, device_id, Status(online=False))
    registry.record("dev-never-born")  # known from its state alone: no birth
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = inventory(registry, ApiRequest(id="r-1", after=after))
        assert page.ok
        assert page.id == "r-1"
        assert 0 < len(page.inventory) <= MAX_LISTED_DEVICES
        assert len(encode(page)) < MAX_PAYLOAD_BYTES
        seen += [info.device for info in page.inventory]
        pages += 1
        if page.next is None:
            break
        assert page.next == page.inventory[-1].device
        after = page.next
    assert seen == sorted([*ids, "dev-never-born"])
    assert pages > (len(ids) + 1) // MAX_LISTED_DEVICES + 1  # the byte budget split pages
    last = inventory(registry, ApiRequest(after="dev-0599")).inventory
    assert [(i.device, i.fw, i.groups) for i in last] == [("dev-never-born", None, [])]
    offline = inventory(registry, ApiRequest()).inventory[0]
    assert (offline.device, offline.online, offline.fw) == ("dev-0000", False, "1.4.2")
