"""A bad network between two namespaces, done in userspace: what `tc netem` does
(random loss, delay with jitter), for kernels without sch_netem (this one has none, nor
any tc classifier or iptables).

The namespaces are joined by two TUN devices (netns.Netns.peer_namespace); this
process reads every IP packet from one and writes it to the other, dropping a share of
the UDP ones (the media) and holding each for `delay ± jitter` (so packets reorder, as
with netem). TCP (the member's MQTT link) passes untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.netns import Link, Netns

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
UDP = 17


def open_tun(name: str) -> int:
    """Attach to the TUN device `name` of the calling thread's namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


@dataclass
class Impairment:
    loss: float = 0.10
    delay_s: float = 0.050
    jitter_s: float = 0.050
    seed: int = 7
    counts: dict[str, int] = field(default_factory=lambda: {"udp": 0, "dropped": 0, "other": 0})

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def carry(self, packet: bytes, write: int) -> None:
        loop = asyncio.get_running_loop()
        if len(packet) < 20 or packet[9] != UDP:
            self.counts["other"] += 1
            _write(write, packet)
            return
        self.counts["udp"] += 1
        if self._random.random() < self.loss:
            self.counts["dropped"] += 1
            return
        hold = max(0.0, self.delay_s + self._random.uniform(-self.jitter_s, self.jitter_s))
        loop.call_later(hold, _write, write, packet)


def _write(fd: int, packet: bytes) -> None:
    with contextlib.suppress(OSError):  # a full queue drops, as a real link would
        os.write(fd, packet)


@contextlib.contextmanager
def impaired(space: Netns, link: Link, impairment: Impairment) -> Iterator[Impairment]:
    """Carry the link's packets with `impairment` applied (both ways) until the block ends.
    Needs a running event loop in this thread (the test's)."""
    ours = open_tun(link.ours)
    with space.inside(link.netns):
        theirs = open_tun(link.theirs)
    loop = asyncio.get_running_loop()

    def pump(src: int, dst: int) -> None:
        while True:
            try:
                packet = os.read(src, 65536)
            except BlockingIOError:
                return
            except OSError:
                return
            impairment.carry(packet, dst)

    loop.add_reader(ours, pump, ours, theirs)
    loop.add_reader(theirs, pump, theirs, ours)
    try:
        yield impairment
    finally:
        loop.remove_reader(ours)
        loop.remove_reader(theirs)
        os.close(ours)
        os.close(theirs)
