"""A network namespace of a test's own, and a way for this process to work inside it.

WebRTC needs an address that is not loopback; a machine may have none. The namespace
gets loopback and an interface with a private address. `inside()` moves the calling
thread (the test's event loop thread) into it with setns(2): sockets it opens from then
on, and processes it starts (Janus, a simulated device), live there. Threads started
before keep the old namespace; none of ours opens sockets.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def require_netns() -> None:
    """Skip when namespaces are impossible here (not root, no iproute2), except in CI."""
    reason = None
    if shutil.which("ip") is None:
        reason = "the ip command (iproute2) is not installed"
    elif os.geteuid() != 0 or not sys.platform.startswith("linux"):
        reason = "network namespaces need root on Linux"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI needs it for the media tests")
    pytest.skip(reason)


def ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {run.stderr.strip()}")


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Link:
    """A pair of TUN devices from the test's namespace to another one."""

    netns: str  # the other namespace
    ours: str  # our end's interface
    theirs: str  # theirs
    subnet: str  # a.b.c: we are .1, they are .2

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    @property
    def address(self) -> str:
        return f"{self.subnet}.2"


@dataclass
class Netns:
    name: str
    address: str  # the dummy interface's address: media goes here
    subnet: int = 0
    extra: list[str] = field(default_factory=list)  # further namespaces made for this one

    def exec_args(self, name: str | None = None) -> list[str]:
        return ["ip", "netns", "exec", name or self.name]

    @contextlib.contextmanager
    def inside(self, name: str | None = None) -> Iterator[None]:
        """The calling thread in this namespace (or in `name`) until the block ends."""
        own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        back = os.open(own, os.O_RDONLY)
        try:
            _setns(f"/run/netns/{name or self.name}")
            try:
                yield
            finally:
                if _libc.setns(back, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "cannot return to the test's namespace")
        finally:
            os.close(back)

    def peer_namespace(self, tag: str) -> Link:
        """A second namespace joined to this one by a pair of TUN devices whose packets
        this process carries (`Impairment`): its default route goes through us."""
        other = f"{self.name}-{tag}"
        ip("netns", "add", other)
        self.extra.append(other)
        link = Link(other, f"t{tag}a", f"t{tag}b", f"10.{200 + self.subnet % 50}.{len(self.extra)}")
        for dev, space, here, there in (
            (link.ours, self.name, link.gateway, link.address),
            (link.theirs, other, link.address, link.gateway),
        ):
            ip("tuntap", "add", "dev", dev, "mode", "tun", netns=space)
            ip("addr", "add", here, "peer", there, "dev", dev, netns=space)
            ip("link", "set", dev, "up", netns=space)
        ip("link", "set", "lo", "up", netns=other)
        ip("route", "add", "default", "dev", link.theirs, netns=other)
        return link

    def delete(self) -> None:
        for name in [*self.extra, self.name]:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@contextlib.contextmanager
def netns(tag: str = "mix") -> Iterator[Netns]:
    """A fresh namespace named for this test run (pid and random), deleted after."""
    require_netns()
    suffix = uuid.uuid4().hex[:4]
    name = f"f{tag}{os.getpid() % 100000}{suffix}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"ip netns add failed: {made.stderr.strip()}")
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    subnet = int(suffix, 16) % 200
    space = Netns(name, f"10.{subnet}.0.1", subnet)
    try:
        ip("link", "set", "lo", "up", netns=name)
        # A veth pair with both ends inside: this kernel may lack the dummy driver.
        ip("link", "add", "m0", "type", "veth", "peer", "name", "m1", netns=name)
        ip("addr", "add", f"{space.address}/24", "dev", "m0", netns=name)
        ip("link", "set", "m0", "up", netns=name)
        ip("link", "set", "m1", "up", netns=name)
        yield space
    finally:
        space.delete()
