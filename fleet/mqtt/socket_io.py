"""Fast paths through paho's socket: writes from the loop thread, buffered reads.

A thousand simulated devices or a controller under load spend most of their time in the
syscalls and wake-ups of single packets; these patches cut that, for plain TCP.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.matcher import MQTTMatcher


def register_writes_on_loop(client: aiomqtt.Client) -> None:
    """Let publishes from the event loop's own thread skip aiomqtt's write machinery.

    aiomqtt registers the socket writer with `call_soon_threadsafe` on every
    publish (paho may call from the executor thread that runs `connect`), and
    that writes a byte to the loop's self-pipe each time: a fifth of the CPU of
    a thousand simulated devices. Registering a selector writer per packet is
    costly too (two epoll_ctl calls, a transport lookup): at 10,000 state reports
    the controller's PUBACKs spent more there than in sending. On the loop
    thread the write is done on the next loop pass instead, and a writer is
    registered only when the kernel's buffer is full. Any other thread still
    takes aiomqtt's own path.
    """
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    paho = client._client
    threadsafe_register = paho.on_socket_register_write
    aiomqtt_unregister = paho.on_socket_unregister_write
    if threadsafe_register is None or aiomqtt_unregister is None:
        raise RuntimeError("aiomqtt's socket write callbacks are not set")
    writer = False  # a selector writer is registered (aiomqtt's, or ours when the buffer filled)

    def flush() -> None:
        nonlocal writer
        try:
            paho.loop_write()
        except Exception as exc:  # a broken pipe: the connection is gone
            disconnected = client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)
            return
        sock = paho.socket()
        if sock is not None and paho.want_write() and not writer:
            writer = True
            loop.add_writer(sock.fileno(), flush)

    def register(paho_client: Any, userdata: Any, sock: Any) -> None:
        nonlocal writer
        if threading.get_ident() != loop_thread:
            writer = True
            threadsafe_register(paho_client, userdata, sock)
            return
        loop.call_soon(flush)

    def unregister(paho_client: Any, userdata: Any, sock: Any) -> None:
        nonlocal writer
        if writer:
            writer = False
            aiomqtt_unregister(paho_client, userdata, sock)

    paho.on_socket_register_write = register
    paho.on_socket_unregister_write = unregister


class _BufferedReads:
    """A plain TCP socket whose `recv` serves paho's small reads from one large read.

    paho reads a packet in three or more `recv` calls (command byte, length bytes,
    body) and `loop_read` handles one packet per readiness callback, so at a few
    thousand messages a second the loop spends most of its time in syscalls and
    epoll rounds. Reading 64 KiB at once and draining what was read in one callback
    (`_drain_buffered`) cuts that to about one syscall per 64 KiB.
    """

    __slots__ = ("_buf", "_pos", "_sock", "refills")

    CHUNK = 64 * 1024

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        # Reads from the socket left in this callback; none left looks like "no data",
        # so one busy connection cannot hold the event loop (epoll fires again).
        self.refills = 1

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            if self.refills <= 0:
                raise BlockingIOError
            self.refills -= 1
            data = self._sock.recv(max(size, self.CHUNK))
            if len(data) <= size:
                return data  # includes b"" (peer closed)
            self._buf, self._pos = data, 0
        chunk = self._buf[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def buffer_reads(client: aiomqtt.Client) -> None:
    """Give paho a `_BufferedReads` socket and a `loop_read` that drains it (plain TCP only)."""
    paho = client._client
    opened = paho.on_socket_open
    loop_read = paho.loop_read

    def on_open(paho_client: Any, userdata: Any, sock: Any) -> None:
        if type(sock) is socket.socket:  # not TLS (its own buffering) nor WebSocket
            paho_client._sock = _BufferedReads(sock)
        if opened is not None:
            opened(paho_client, userdata, sock)

    def drain(max_packets: int = 1) -> MQTTErrorCode:
        sock = paho._sock
        if not isinstance(sock, _BufferedReads):
            return loop_read(max_packets)
        # A name of its own: the `is` test below would widen `sock` back to paho's type.
        reads: _BufferedReads = sock
        reads.refills = 4  # at most 256 KiB per callback
        rc = loop_read(max_packets)
        while rc == 0 and paho._sock is reads and reads.buffered:
            rc = loop_read(max_packets)
        return rc

    paho.on_socket_open = on_open
    # a per-instance override of paho's method, which mypy reads as a class attribute
    paho.loop_read = drain  # type: ignore[method-assign]
    # paho walks its per-filter callback tree for every message; aiomqtt registers
    # none, so an empty tree is skipped.
    paho._on_message_filtered = _SkipEmptyMatcher()


class _SkipEmptyMatcher(MQTTMatcher):
    # The base named outright: mypy sees its unannotated methods through super() as untyped.
    def __init__(self) -> None:
        MQTTMatcher.__init__(self)

    def iter_match(self, topic: str) -> Any:
        return MQTTMatcher.iter_match(self, topic) if self._root._children else ()
