"""amqtt's Broker with three defects of 0.12.1 corrected for fleet scale.

1. On every new connection amqtt replays the retained messages matching
   *every client's* subscription filters to the newcomer
   (`_handle_client_session` loops over all of `_subscriptions`). A device
   would receive the whole fleet's retained status, state and desired docs,
   past the topic ACL (RECEIVE is not checked on that path). Here retained
   messages are replayed only for filters the session itself holds, as MQTT
   3.1.1 section 3.3.1.3 asks.
2. Each broadcast scans every subscription filter (and formats a debug
   f-string for each one that does not match): O(filters) per message, so a
   fleet of N devices costs O(N^2) to report its state. Here exact filters are
   found by dict lookup and only wildcard filters are scanned.
3. After every SUBSCRIBE amqtt evaluates `repr(self._subscriptions)` for a
   debug line, formatting the whole table; the table's repr is made O(1).
4. A new subscription scans every retained message, and a disconnect scans
   every filter: both O(fleet) per device. Here an exact filter finds its
   retained message by lookup, a wildcard one walks a tree of the retained
   topics (only the branches its levels name), and a disconnect visits only
   the client's own filters.
5. `shutdown()` with clients still connected can hang: stopping a session's
   handler cancels its reader and waits for an event that the reader sets
   only when its clean-up completes; a reader that ended on an exception
   never sets it. Here the clients' connections are dropped first, as a
   process exit would drop them (their readers end on EOF, wills are
   published as after a crash), a reader that is already over counts as
   stopped, and the wait is bounded.
6. Every packet goes out in a socket send of its own (amqtt writes and drains
   per packet): at a few thousand messages a second the broker spends a large
   part of its time in syscalls. Here what a connection writes in one event
   loop iteration leaves in one send (`CorkedWriter`).
7. A client's publishes wait in its session's queue, and the client loop takes
   them one at a time, through a task and an `asyncio.wait` each. Here what is
   queued is delivered in one go; and before a disconnect is handled, so what a
   client sent before its DISCONNECT goes out first (MQTT 3.1.1 4.6).
8. A message goes out at the subscription's QoS even when it was published at a
   lower one (amqtt never passes the publish QoS to the broadcast). Here it goes
   out at the lower of the two (MQTT 3.1.1 3.8.4).
9. Wildcard filters are scanned one by one for every message, so one client
   holding thousands of them slows every delivery to everyone. Here they sit in a
   trie of topic levels: a message visits only the branches its own levels name,
   whatever the number of filters.

The broadcast below keeps amqtt's semantics otherwise: RECEIVE topic
filtering per target, queueing for disconnected persistent sessions, QoS of
the subscription unless forced.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Iterator
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.session import OutgoingApplicationMessage, Session

Subscribers = list[tuple[Session, int]]
log = logging.getLogger(__name__)
HANDLER_STOP_TIMEOUT_S = 2.0
# Session.attributes key: an Event set when the session's client loop has ended.
LOOP_DONE_KEY = "espfleet.loop_done"
# The QoS of the PUBLISH being handled in this task (each client loop is a task).
_publish_qos: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "publish_qos", default=None
)


class _Level:
    """One level of a `LevelTree`: children by level text, the string ending here."""

    __slots__ = ("children", "key")

    def __init__(self) -> None:
        self.children: dict[str, _Level] = {}
        self.key: str | None = None


class LevelTree:
    """Slash-separated strings (filters or topics) stored by level."""

    def __init__(self) -> None:
        self._root = _Level()

    def add(self, key: str) -> None:
        node = self._root
        for level in key.split("/"):
            node = node.children.setdefault(level, _Level())
        node.key = key

    def discard(self, key: str) -> None:
        levels = key.split("/")
        path = [self._root]
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return
            path.append(child)
        path[-1].key = None
        # Prune the branch back to the last level still in use.
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.key is not None or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]

    def clear(self) -> None:
        self._root = _Level()


class FilterTrie(LevelTree):
    """Wildcard filters; `match` costs O(levels x matching branches), not O(filters)."""

    def match(self, topic: str) -> list[str]:
        """The filters that match `topic`."""
        levels = topic.split("/")
        n = len(levels)
        found: list[str] = []
        stack = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            rest = node.children.get("#")  # '#' also matches the parent level itself
            if rest is not None and rest.key is not None:
                found.append(rest.key)
            if i == n:
                if node.key is not None:
                    found.append(node.key)
                continue
            child = node.children.get(levels[i])
            if child is not None:
                stack.append((child, i + 1))
            plus = node.children.get("+")
            if plus is not None:
                stack.append((plus, i + 1))
        return found


class TopicTree(LevelTree):
    """Topics; `matching` visits only the branches a filter's levels name."""

    def matching(self, topic_filter: str) -> list[str]:
        """The topics `topic_filter` matches: '+' walks one level's children, '#' a subtree."""
        levels = topic_filter.split("/")
        n = len(levels)
        found: list[str] = []
        stack = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == n:
                if node.key is not None:
                    found.append(node.key)
                continue
            level = levels[i]
            if level == "#":
                subtree = [node]  # '#' matches the parent level too
                while subtree:
                    below = subtree.pop()
                    if below.key is not None:
                        found.append(below.key)
                    subtree.extend(below.children.values())
            elif level == "+":
                stack.extend((child, i + 1) for child in node.children.values())
            else:
                child = node.children.get(level)
                if child is not None:
                    stack.append((child, i + 1))
        return found


class RetainedTable(dict[str, Any]):
    """amqtt's topic -> retained message table, with its topics in a `TopicTree`."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = TopicTree()

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self:
            self.tree.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.tree.discard(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.tree.discard(key)
        return super().pop(key, *default)

    def clear(self) -> None:
        super().clear()
        self.tree.clear()


class SubscriptionTable(dict[str, Subscribers]):
    """amqtt's filter -> subscribers table, indexed by kind of filter and by client."""

    def __init__(self) -> None:
        super().__init__()
        self.wildcards = FilterTrie()
        self.by_client: dict[str, set[str]] = {}

    def __setitem__(self, key: str, value: Subscribers) -> None:
        super().__setitem__(key, value)
        if "+" in key or "#" in key:
            self.wildcards.add(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.wildcards.discard(key)

    def clear(self) -> None:
        super().clear()
        self.wildcards.clear()
        self.by_client.clear()

    def __repr__(self) -> str:
        return f"<{len(self)} subscription filters>"

    def candidates(self, topic: str) -> Iterator[tuple[str, Subscribers]]:
        exact = self.get(topic)
        if exact:
            yield topic, exact
        for topic_filter in self.wildcards.match(topic):
            subscribers = self.get(topic_filter)
            if subscribers:
                yield topic_filter, subscribers


class CorkedWriter(StreamWriterAdapter):
    """Collects a connection's writes of one loop iteration; the next iteration sends them.

    amqtt awaits `drain()` after each packet. That still applies back pressure
    (once the transport's buffer is over its high-water mark, drain waits), only
    a packet's bytes reach the transport one loop iteration later.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        super().__init__(writer)
        self._pending = bytearray()
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if self.is_closed:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending += data

    def _flush(self) -> None:
        if self._pending and not self.is_closed:
            self._writer.write(bytes(self._pending))
        self._pending.clear()

    async def close(self) -> None:
        self._flush()
        await super().close()


class FleetAmqttBroker(Broker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions: SubscriptionTable = SubscriptionTable()
        self._retained_messages: RetainedTable = RetainedTable()

    async def _client_message_loop(self, client_session: Session, handler: Any) -> None:
        """amqtt 0.12.1's loop, but queued publishes go out together and before a disconnect."""
        disconnect_waiter = asyncio.ensure_future(handler.wait_disconnect())
        subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
        unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
        wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
        loop_done = asyncio.Event()
        client_session.attributes[LOOP_DONE_KEY] = loop_done
        try:
            await self._run_client_loop(
                client_session,
                handler,
                [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver],
            )
        finally:
            try:
                await self._connection_ended(client_session)
            finally:
                loop_done.set()

    async def _connection_ended(self, client_session: Session) -> None:
        """After a client's connection ended, whatever the way, before a newer connection
        with its client id goes on (it waits for LOOP_DONE_KEY)."""

    async def _run_client_loop(
        self, client_session: Session, handler: Any, waiters: list[asyncio.Future[Any]]
    ) -> None:
        disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver = waiters
        connected = True
        while connected:
            try:
                done, _ = await asyncio.wait(
                    [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if wait_deliver in done:
                    if not await self._handle_message_delivery(
                        client_session, handler, wait_deliver
                    ):
                        break
                    if not await self._deliver_queued(client_session, handler):
                        break
                    wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
                if disconnect_waiter in done:
                    await self._deliver_queued(client_session, handler)
                    await self._handle_disconnect(client_session, handler, disconnect_waiter)
                    connected = False
                if subscribe_waiter in done:
                    await self._handle_subscription(client_session, handler, subscribe_waiter)
                    subscribe_waiter = asyncio.ensure_future(
                        handler.get_next_pending_subscription()
                    )
                if unsubscribe_waiter in done:
                    await self._handle_unsubscription(client_session, handler, unsubscribe_waiter)
                    unsubscribe_waiter = asyncio.ensure_future(
                        handler.get_next_pending_unsubscription()
                    )
            except asyncio.CancelledError:
                break
        waiters = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    async def _handle_message_delivery(
        self, client_session: Session, handler: Any, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        message = wait_deliver.result()
        token = _publish_qos.set(getattr(message, "qos", None))
        try:
            delivered = await super()._handle_message_delivery(
                client_session, handler, wait_deliver
            )
            return bool(delivered)
        finally:
            _publish_qos.reset(token)

    async def _broadcast_message(
        self,
        session: Session | None,
        topic: str | None,
        data: bytes | bytearray | None,
        force_qos: int | None = None,
    ) -> None:
        # amqtt passes no QoS for a client's PUBLISH; _run_broadcast caps the
        # subscription's QoS by this one.
        if force_qos is None and session is not None:
            force_qos = _publish_qos.get()
        await super()._broadcast_message(session, topic, data, force_qos)

    async def _deliver_queued(self, client_session: Session, handler: Any) -> bool:
        """Deliver every publish already in the session's queue; False to close the client."""
        queue = client_session.delivered_message_queue
        loop = asyncio.get_running_loop()
        # It ends: the client's reader can queue more only where a delivery yields to the
        # loop, and every round takes one off.
        while not queue.empty():
            message: asyncio.Future[Any] = loop.create_future()
            message.set_result(queue.get_nowait())
            if not await self._handle_message_delivery(client_session, handler, message):
                return False
        return True

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        await self._client_connected(
            listener_name, StreamReaderAdapter(reader), CorkedWriter(writer)
        )

    async def shutdown(self) -> None:
        # Stop listening first: clients that lose their connection below must not
        # reconnect to this broker while it is going away.
        for server in self._servers.values():
            instance = getattr(server, "instance", None)
            if instance is not None:
                instance.close()
        aborted = 0
        for _session, handler in list(self._sessions.values()):
            transport = transport_of(handler)
            if transport is not None and not transport.is_closing():
                transport.abort()
                aborted += 1
        if aborted:
            # Let the readers see EOF and detach their sessions.
            for _ in range(50):
                if not any(h is not None for _s, h in self._sessions.values()):
                    break
                await asyncio.sleep(0.01)
        await super().shutdown()

    async def _stop_handler(self, handler: Any) -> None:
        reader = getattr(handler, "_reader_task", None)
        stopped = getattr(handler, "_reader_stopped", None)
        if reader is not None and reader.done() and stopped is not None:
            stopped.set()
        try:
            async with asyncio.timeout(HANDLER_STOP_TIMEOUT_S):
                await super()._stop_handler(handler)
        except TimeoutError:
            log.warning(
                "a session handler did not stop in %ss; dropping it", HANDLER_STOP_TIMEOUT_S
            )
            transport = transport_of(handler)
            if transport is not None:
                transport.abort()
            if stopped is not None:
                stopped.set()

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        code: int = await super().add_subscription(subscription, session)
        if code != 0x80 and session.client_id is not None:
            self._subscriptions.by_client.setdefault(session.client_id, set()).add(subscription[0])
        return code

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        deleted: int = super()._del_subscription(a_filter, session)
        if deleted and session.client_id is not None:
            held = self._subscriptions.by_client.get(session.client_id)
            if held is not None:
                held.discard(a_filter)
                if not held:
                    del self._subscriptions.by_client[session.client_id]
        return deleted

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, qos = subscription
        if topic_filter not in self._subscriptions.by_client.get(session.client_id or "", ()):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        if "+" in topic_filter or "#" in topic_filter:
            retained_table = self._retained_messages
            matching = [
                retained_table[topic]
                for topic in retained_table.tree.matching(topic_filter)
                if self._matches(topic, topic_filter)  # '$' topics and '+'/'#' filters
            ]
        else:
            exact = self._retained_messages.get(topic_filter)
            matching = [exact] if exact is not None else []
        tasks = [
            asyncio.ensure_future(
                handler.mqtt_publish(
                    retained.topic, retained.data, min(qos, retained.qos or qos), retain=True
                )
            )
            for retained in matching
        ]
        if tasks:
            await asyncio.wait(tasks)

    async def _del_all_subscriptions(self, session: Session) -> None:
        for topic_filter in list(self._subscriptions.by_client.get(session.client_id or "", ())):
            if self._del_subscription(topic_filter, session) and not self._subscriptions.get(
                topic_filter
            ):
                del self._subscriptions[topic_filter]

    async def _run_broadcast(
        self, running_tasks: deque[asyncio.Task[OutgoingApplicationMessage]]
    ) -> None:
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        for topic_filter, subscribers in self._subscriptions.candidates(topic):
            if topic_filter != topic and not self._matches(topic, topic_filter):
                continue
            for target_session, sub_qos in list(subscribers):
                qos = min(broadcast.get("qos", sub_qos), sub_qos)
                if not await self._topic_filtering(
                    target_session, topic=topic, action=Action.RECEIVE
                ):
                    continue
                connected = target_session.transitions.state == "connected"
                if (
                    not connected
                    and not target_session.clean_session
                    and qos in (QOS_1, QOS_2)
                    and not target_session.is_anonymous
                ):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if not connected:
                    continue
                handler = self._get_handler(target_session)
                if handler:
                    running_tasks.append(
                        asyncio.ensure_future(
                            handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
                        )
                    )


def transport_of(handler: Any) -> asyncio.WriteTransport | None:
    """The socket transport under an amqtt handler's writer (TCP or WebSocket)."""
    writer = getattr(handler, "writer", None)
    inner = getattr(writer, "_writer", None) or getattr(writer, "_protocol", None)
    transport = getattr(inner, "transport", None)
    return transport if isinstance(transport, asyncio.WriteTransport) else None
