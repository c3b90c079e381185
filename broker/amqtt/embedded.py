"""The embedded broker: amqtt in-process, with the fleet's credentials and ACL.

``async with EmbeddedBroker(creds_path, port=1883) as broker:`` listens on TCP (and
WebSocket / TLS when asked); ``await broker.stop()`` frees the ports.

`FleetBroker` builds on `broker.amqtt.fixes.FleetAmqttBroker` (amqtt 0.12.1's Broker with
its scaling defects fixed: per-client filter index, retained replay limited to the
client's own filters, exact-filter lookups) and adds what the security model needs and
the plugin interface cannot reach. Each override copies amqtt's method (the version is
pinned in pyproject) and marks what differs:

1. A CONNECT is authenticated *before* amqtt touches an existing session with the same
   client id. Stock amqtt first deletes that session (clean session), or copies the new
   username into it and evicts the live connection (persistent session), so any client
   without credentials that knows a device id could knock the device off its
   subscriptions.
2. On connect, retained messages are replayed for the client's own filters only, looked
   up in the per-client index instead of a loop over every filter in the broker. A resumed
   session's filters are re-checked against the ACL first and dropped when its user may
   no longer hold them (groups changed, credentials replaced by another role).
3. Topic checks call FleetTopicPlugin synchronously instead of through the plugin
   manager's task-per-plugin gather: RECEIVE runs per message per subscriber.
4. A client id belongs to one user (fleet/auth/clientids.py, checked by the auth plugin).
   When its owner connects again, the older connection is closed first, as Mosquitto
   does; stock amqtt deletes the session of a clean-session takeover but leaves the old
   socket open, so that client stays connected and deaf.
5. Messages a persistent session queued while offline pass the read ACL again when
   it resumes, like its subscriptions: the user may have changed (groups, role).
6. Bounds (broker/amqtt/admission.py): sockets in all and per address before CONNECT, a
   CONNECT timeout, a failed-login rate limit per address and client id, packets over
   `MAX_PACKET_BYTES` close the connection before they are read, payloads over the
   protocol's 64 KiB are dropped, and each client holds at most
   `MAX_SUBSCRIPTIONS_PER_CLIENT` filters.
7. An MQTT 5 CONNECT is refused at once with CONNACK 0x01 (unacceptable protocol
   version, as MQTT 3.1.1 section 3.1.2.2 asks) and one log line. amqtt 0.12 parses it
   as 3.1.1, misreads its properties as the payload, and hangs or fails with a traceback.
8. A person's browser user (web role) is closed at its credentials' expiry, its will
   sent, as the Mosquitto plugin does: the ACL alone would leave it connected and deaf.
9. What a user may cost (fleet/auth/limits.py): a homeassistant or agent user holds at
   most `SESSIONS_PER_USER` sessions, a persistent session ends `SESSION_EXPIRY_S` after
   its client left, and an offline session queues messages only for devices and
   controller-role users, at most `QUEUED_MESSAGES_PER_CLIENT` and
   `QUEUED_BYTES_PER_CLIENT` of them (amqtt queues without a bound).
10. When a device's connection ends, whatever the way (a clean DISCONNECT too, which
   suppresses the will), the broker publishes its offline status, retained, before a
   newer connection of that device goes on, unless the connection's last status (its
   goodbye, or its will) said offline already: presence is the broker's word, as the
   Mosquitto plugin makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import amqtt
from amqtt.adapters import (
    ReaderAdapter,
    StreamReaderAdapter,
    WebSocketsReader,
    WebSocketsWriter,
    WriterAdapter,
)
from amqtt.broker import Broker, Server
from amqtt.contexts import Action, ListenerConfig
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.constants import QOS_0
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import format_client_message, gen_client_id
from transitions import MachineError

from broker.amqtt.admission import Admission
from broker.amqtt.fixes import LOOP_DONE_KEY, CorkedWriter, FleetAmqttBroker, transport_of
from broker.amqtt.plugins import SESSION_USER_KEY, FleetAuthPlugin, FleetTopicPlugin
from fleet.auth import Credential, Role
from fleet.auth.limits import (
    QUEUED_BYTES_PER_CLIENT,
    QUEUED_MESSAGES_PER_CLIENT,
    SESSION_EXPIRY_S,
    SESSIONS_PER_USER,
    queues_offline,
    session_bounded,
)
from fleet.errors import ConfigError
from fleet.protocol.messages import MAX_PAYLOAD_BYTES
from fleet.protocol.topics import DEFAULT_PREFIX, Topics

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # from accept to a complete CONNECT packet
TAKEOVER_TIMEOUT_S = 2.0  # for the older connection of a client id to wind down
# A packet may carry a 64 KiB payload plus its topic and headers; anything larger closes
# the connection before its body is read (Mosquitto: max_packet_size, the same value).
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 4096
# The controller holds about ten filters, a device at most 36 (its inboxes and groups).
MAX_SUBSCRIPTIONS_PER_CLIENT = 256
_SUBACK_FAILURE = 0x80
_QUEUED_BYTES_KEY = "espfleet.queued_bytes"  # payload bytes in a session's offline queue
OFFLINE = b'{"online":false}'  # a device's will, docs/protocol.md §3
_SAID_OFFLINE_KEY = "espfleet.said_offline"  # the device's last status said offline


class PacketTooLarge(Exception):
    pass


class _BoundedReader(StreamReaderAdapter):
    """Refuses to read a packet body larger than MAX_PACKET_BYTES.

    amqtt reads a packet's remaining length, then the whole body in one read (a
    publish payload in one more); a larger read closes the socket unread instead.
    """

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.WriteTransport) -> None:
        super().__init__(reader)
        self._transport = transport

    async def read(self, n: int = -1) -> bytes:
        if n > MAX_PACKET_BYTES:
            self._transport.abort()
            raise PacketTooLarge(f"a packet of more than {n} bytes (limit {MAX_PACKET_BYTES})")
        data: bytes = await super().read(n)
        return data


AMQTT_VERSION = "0.12.1"  # the version whose Broker internals FleetBroker overrides
_PREAUTHENTICATED_KEY = "espfleet.preauthenticated"
_AUTH_PLUGIN = f"{FleetAuthPlugin.__module__}.{FleetAuthPlugin.__qualname__}"
_TOPIC_PLUGIN = f"{FleetTopicPlugin.__module__}.{FleetTopicPlugin.__qualname__}"

if amqtt.__version__ != AMQTT_VERSION:  # pragma: no cover - guarded by the pin
    log.warning(
        "amqtt %s installed; FleetBroker was written against %s", amqtt.__version__, AMQTT_VERSION
    )


class _DropStartupTraceback(logging.Filter):
    """amqtt logs a traceback when a listener cannot bind; EmbeddedBroker.start raises a
    ConfigError naming the cause instead, so the traceback is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Broker startup failed"


logging.getLogger("amqtt.broker").addFilter(_DropStartupTraceback())


class _BoundedWsReader(WebSocketsReader):
    """`_BoundedReader` for WebSocket connections (the server then closes the socket)."""

    async def read(self, n: int = -1) -> bytes:
        if n > MAX_PACKET_BYTES:
            raise PacketTooLarge(f"a packet of more than {n} bytes (limit {MAX_PACKET_BYTES})")
        data: bytes = await super().read(n)
        return data


class FleetBroker(FleetAmqttBroker):
    """FleetAmqttBroker plus authentication-first CONNECT and a synchronous ACL."""

    def __init__(self, config: dict[str, Any], admission: Admission | None = None) -> None:
        super().__init__(config)
        self.admission = admission or Admission()
        self._held: dict[str, set[str]] = {}  # client ids of sessions per bounded user
        topic_plugins = [p for p in self.plugins_manager.plugins if isinstance(p, BaseTopicPlugin)]
        self._fleet_topic: FleetTopicPlugin | None = None
        if len(topic_plugins) == 1 and isinstance(topic_plugins[0], FleetTopicPlugin):
            self._fleet_topic = topic_plugins[0]

    # --- 1: authenticate first ------------------------------------------------------------
    async def _initialize_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        remote_address: str,
        remote_port: int,
    ) -> tuple[BrokerProtocolHandler, Session]:
        peer = format_client_message(address=remote_address, port=remote_port)
        try:
            # CHANGED: a CONNECT must arrive in time, and a socket that fails to send one
            # is closed on our side too.
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                # CHANGED: look at the protocol level before amqtt parses the packet.
                reader = await _refuse_mqtt5(reader, writer, peer)
                handler, client_session = await BrokerProtocolHandler.init_from_connect(
                    reader, writer, self.plugins_manager
                )
        except TimeoutError as exc:
            await writer.close()
            raise AMQTTError(f"{peer}: no CONNECT within {CONNECT_TIMEOUT_S}s") from exc
        except Mqtt5Refused:
            raise
        except AMQTTError as exc:
            self.logger.warning(f"[MQTT-3.1.0-1] {peer}: Can't read first packet as CONNECT: {exc}")
            await writer.close()
            raise AMQTTError(exc) from exc
        except MQTTError as exc:
            self.logger.warning(f"Invalid connection from {peer}")
            await writer.close()
            raise MQTTError(exc) from exc
        except (NoDataError, PacketTooLarge) as exc:
            await writer.close()
            raise AMQTTError(exc) from exc
        finally:
            self.admission.connected(remote_address)

        if client_session.clean_session and not client_session.client_id:
            client_session.client_id = gen_client_id()

        # CHANGED: refuse here, before any existing session with this client id is touched;
        # a client id that keeps failing from this address is refused without a check.
        client_id = client_session.client_id or ""
        refused = not self.admission.may_try_login(
            remote_address, client_id
        ) or not await super()._authenticate(client_session, ListenerConfig())
        if refused:
            self.admission.login_failed(remote_address, client_id)
        # CHANGED: a homeassistant or agent user holds at most SESSIONS_PER_USER sessions.
        elif not self._may_hold_session(client_session):
            refused = True
        if refused:
            client_session.parent = 0
            handler.attach(client_session, reader, writer)
            try:
                await handler.mqtt_connack_authorize(False)
            finally:
                await writer.close()
            msg = (
                f"CONNECT refused (not authorised): client id {client_session.client_id!r},"
                f" user {client_session.username!r} from {remote_address}:{remote_port}"
            )
            raise AMQTTError(msg)

        # CHANGED: the owner is back (the auth plugin checked the id is theirs): close
        # the older connection before its session is deleted or resumed.
        await self._close_older_connection(client_session)
        if client_session.clean_session:
            await self._delete_session(client_session.client_id or "")
            client_session.parent = 0
        elif client_session.client_id in self._sessions:
            existing, _ = self._sessions[client_session.client_id]
            existing.will_flag = client_session.will_flag
            existing.will_message = client_session.will_message
            existing.will_topic = client_session.will_topic
            existing.will_qos = client_session.will_qos
            existing.will_retain = client_session.will_retain
            existing.keep_alive = client_session.keep_alive
            existing.username = client_session.username
            existing.password = client_session.password
            existing.is_anonymous = client_session.is_anonymous
            # CHANGED: carry the authenticated identity over to the resumed session.
            user = client_session.attributes.get(SESSION_USER_KEY)
            if user is None:
                existing.attributes.pop(SESSION_USER_KEY, None)
            else:
                existing.attributes[SESSION_USER_KEY] = user
            client_session = existing
            client_session.parent = 1
        else:
            client_session.parent = 0
        client_session.attributes[_PREAUTHENTICATED_KEY] = True

        timeout_disconnect_delay = self.config.get("timeout-disconnect-delay", 0)
        if client_session.keep_alive > 0 and isinstance(timeout_disconnect_delay, int):
            client_session.keep_alive += timeout_disconnect_delay
        return handler, client_session

    def _credential(self, session: Session) -> Credential | None:
        username = session.attributes.get(SESSION_USER_KEY)
        if self._fleet_topic is None or username is None:
            return None
        return self._fleet_topic.store.get(username, refresh=False)

    def _may_hold_session(self, newcomer: Session) -> bool:
        """False when the newcomer's user holds SESSIONS_PER_USER other sessions already."""
        cred = self._credential(newcomer)
        if cred is None or not session_bounded(cred.role):
            return True
        client_id = newcomer.client_id or ""
        held = self._held.setdefault(cred.username, set())
        for other in [c for c in held if not self._holds(cred.username, c)]:
            held.discard(other)
        if client_id not in held and len(held) >= SESSIONS_PER_USER:
            log.warning(
                "refused %r for user %r: it holds %d sessions already",
                client_id,
                cred.username,
                len(held),
            )
            return False
        held.add(client_id)
        return True

    def _holds(self, username: str, client_id: str) -> bool:
        """True while `username` holds the session of `client_id`: it is in `_sessions`
        (which it leaves in the two places overridden below), still this user's, and not
        a clean session that ended (amqtt sweeps those a second later)."""
        entry = self._sessions.get(client_id)
        if entry is None or entry[0].attributes.get(SESSION_USER_KEY) != username:
            return False
        session = entry[0]
        return not (session.clean_session and session.transitions.state != "connected")

    async def _cleanup_session(self, client_id: str) -> None:
        self._forget_held(client_id)
        await super()._cleanup_session(client_id)

    async def _delete_session(self, client_id: str) -> None:
        self._forget_held(client_id)
        await super()._delete_session(client_id)

    def _forget_held(self, client_id: str) -> None:
        entry = self._sessions.get(client_id)
        username = entry[0].attributes.get(SESSION_USER_KEY) if entry else None
        if username is not None and username in self._held:
            self._held[username].discard(client_id)

    async def _close_older_connection(self, newcomer: Session) -> None:
        existing = self._sessions.get(newcomer.client_id or "")
        if existing is None:
            return
        session, handler = existing
        if handler is None or session.transitions.state != "connected":
            return
        log.warning(
            "client id %r connected again (user %r): closing its older connection",
            newcomer.client_id,
            newcomer.username,
        )
        transport = transport_of(handler)
        if transport is not None:
            transport.abort()
        loop_done = session.attributes.get(LOOP_DONE_KEY)
        if isinstance(loop_done, asyncio.Event):
            # Its will (an abnormal end) goes out before the newcomer's first message.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TAKEOVER_TIMEOUT_S):
                    await loop_done.wait()

    async def _authenticate(self, session: Session, listener: ListenerConfig) -> bool:
        # Already decided in _initialize_client_session; don't hash the password twice.
        if session.attributes.pop(_PREAUTHENTICATED_KEY, False):
            return True
        allowed: bool = await super()._authenticate(session, listener)
        return allowed

    # --- 2: retained messages for the client's own subscriptions only -------------------------
    async def _handle_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        client_session: Session,
        handler: BrokerProtocolHandler,
        server: Server,
        listener_name: str,
    ) -> None:
        authenticated = await self._authenticate(
            client_session, self.listeners_config[listener_name]
        )

        if client_session.client_id is None:
            msg = "Client ID was not correctly created/set."
            raise BrokerError(msg)

        while True:
            try:
                client_session.transitions.connect()
                break
            except (MachineError, ValueError):
                if client_session.transitions.is_connected():
                    self.logger.warning(
                        f"Client {client_session.client_id} is already connected, taking over."
                    )
                    old_session = self._sessions[client_session.client_id]
                    await old_session[1].handle_connection_closed()
                    await old_session[1].stop()
                    break
                self.logger.warning(
                    f"Client {client_session.client_id} is reconnecting too quickly, make it wait"
                )
                await asyncio.sleep(1)

        handler.attach(client_session, reader, writer)
        self._sessions[client_session.client_id] = (client_session, handler)

        await handler.mqtt_connack_authorize(authenticated)
        if not authenticated:
            await writer.close()
            return

        await self.plugins_manager.fire_event(
            BrokerEvents.CLIENT_CONNECTED,
            client_id=client_session.client_id,
            client_session=client_session,
        )
        await handler.start()
        await self._publish_session_retained_messages(client_session)
        # CHANGED: stock amqtt loops over every filter in the broker here.
        await self._replay_own_retained(client_session)
        # CHANGED: a person's browser user is closed at its expiry, its will sent, as the
        # Mosquitto plugin does; the ACL denies it everything from then on anyway.
        closing = self._close_at_expiry(client_session, handler)
        try:
            await self._client_message_loop(client_session, handler)
        finally:
            if closing is not None:
                closing.cancel()

    async def _connection_ended(self, client_session: Session) -> None:
        # CHANGED: the broker has the last word on a device's presence. Whatever ended its
        # connection (a clean DISCONNECT too, which suppresses the will), its status says
        # offline, retained, unless the connection's last status said so (a goodbye, the
        # will): a device cannot leave a birth behind and stay online.
        said_offline = client_session.attributes.pop(_SAID_OFFLINE_KEY, False)
        cred = self._credential(client_session)
        if (
            said_offline  # its goodbye or its will said it
            or cred is None
            or cred.role is not Role.DEVICE
            or client_session.client_id != cred.username
            or self._fleet_topic is None
        ):
            return
        topic = self._fleet_topic.acl.topics.status(cred.username)
        await self._broadcast_message(client_session, topic, OFFLINE, force_qos=1)
        await self.retain_message(client_session, topic, OFFLINE, 1)

    def _close_at_expiry(self, session: Session, handler: Any) -> asyncio.TimerHandle | None:
        cred = self._credential(session)
        username = cred.username if cred is not None else None
        transport = transport_of(handler)
        if cred is None or cred.expires is None or transport is None:
            return None

        def close() -> None:
            log.info("closing %r: its credentials expired", username)
            transport.abort()  # an abnormal end: amqtt sends the will

        return asyncio.get_running_loop().call_later(max(0.0, cred.expires - time.time()), close)

    async def _replay_own_retained(self, session: Session) -> None:
        held = self._subscriptions.by_client.get(session.client_id or "", set())
        for topic_filter in list(held):
            if not await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE):
                # The user may no longer hold it (groups changed): drop it, replay nothing.
                self._del_subscription(topic_filter, session)
                if topic_filter in self._subscriptions and not self._subscriptions[topic_filter]:
                    del self._subscriptions[topic_filter]  # del keeps the table's index right
                continue
            await self._publish_retained_messages_for_subscription((topic_filter, QOS_0), session)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # CHANGED: what was queued for the session while offline passes the read ACL now,
        # for the user who resumed it.
        queue = session.retained_messages
        kept = []
        while not queue.empty():
            message = queue.get_nowait()
            if await self._topic_filtering(session, message.topic, Action.RECEIVE):
                kept.append(message)
        for message in kept:
            queue.put_nowait(message)
        session.attributes[_QUEUED_BYTES_KEY] = 0  # the queue is drained below
        await super()._publish_session_retained_messages(session)

    async def _retain_broadcast_message(
        self, broadcast: dict[str, Any], qos: int, target_session: Session
    ) -> None:
        # CHANGED: an offline session's queue is bounded by count and bytes, and only
        # devices and controller-role users get one (fleet/auth/limits.py).
        cred = self._credential(target_session)
        if cred is None or not queues_offline(cred.role):
            return
        size = len(broadcast.get("data") or b"")
        queued = int(target_session.attributes.get(_QUEUED_BYTES_KEY, 0))
        if (
            target_session.retained_messages.qsize() >= QUEUED_MESSAGES_PER_CLIENT
            or queued + size > QUEUED_BYTES_PER_CLIENT
        ):
            return
        target_session.attributes[_QUEUED_BYTES_KEY] = queued + size
        await super()._retain_broadcast_message(broadcast, qos, target_session)

    # --- 6: bounds ------------------------------------------------------------------------------
    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        transport = writer.transport
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if not self.admission.admit(address):
            transport.abort()
            return
        try:
            await self._client_connected(
                listener_name, _BoundedReader(reader, transport), CorkedWriter(writer)
            )
        finally:
            self.admission.closed()
            if not transport.is_closing():
                transport.close()

    async def ws_connected(self, websocket: Any, listener_name: str) -> None:
        peer = getattr(websocket, "remote_address", None)
        address = str(peer[0]) if peer else "?"
        if not self.admission.admit(address):
            await websocket.close()
            return
        try:
            await self._client_connected(
                listener_name, _BoundedWsReader(websocket), WebSocketsWriter(websocket)
            )
        finally:
            self.admission.closed()

    async def _broadcast_message(
        self,
        session: Session | None,
        topic: str | None,
        data: bytes | bytearray | None,
        force_qos: int | None = None,
    ) -> None:
        if data is not None and len(data) > MAX_PAYLOAD_BYTES:
            log.info("dropped a %d-byte message on %s: over 64 KiB", len(data), topic)
            return
        if session is not None and topic is not None and topic.endswith("/status"):
            self._note_status(session, topic, data)
        await super()._broadcast_message(session, topic, data, force_qos)

    def _note_status(self, session: Session, topic: str, data: bytes | bytearray | None) -> None:
        """A device's status on its own topic (a birth, a goodbye, its will): whether it
        said offline itself, so the broker need not say it again at the end."""
        cred = self._credential(session)
        if cred is None or cred.role is not Role.DEVICE or self._fleet_topic is None:
            return
        if topic != self._fleet_topic.acl.topics.status(cred.username):
            return
        try:
            doc = json.loads(data or b"")
        except ValueError:
            doc = None
        session.attributes[_SAID_OFFLINE_KEY] = isinstance(doc, dict) and doc.get("online") is False

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        if data is not None and len(data) > MAX_PAYLOAD_BYTES:
            return
        await super().retain_message(source_session, topic_name, data, qos)

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        held = self._subscriptions.by_client.get(session.client_id or "", ())
        if len(held) >= MAX_SUBSCRIPTIONS_PER_CLIENT and subscription[0] not in held:
            log.info(
                "refused a subscription of %s: it holds %d already",
                session.client_id,
                len(held),
            )
            return _SUBACK_FAILURE
        return await super().add_subscription(subscription, session)

    # --- 3: synchronous ACL ------------------------------------------------------------------
    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        if self._fleet_topic is not None:
            await self._fleet_topic.refresh_for(action)
            return self._fleet_topic.check(session, topic, action)
        allowed: bool = await super()._topic_filtering(session, topic, action)
        return allowed


class EmbeddedBroker:
    """amqtt with FleetAuthPlugin and FleetTopicPlugin, as an async context manager."""

    def __init__(
        self,
        creds_path: Path | str,
        host: str = "127.0.0.1",
        port: int = 1883,
        ws_port: int | None = None,
        prefix: str = DEFAULT_PREFIX,
        certfile: Path | str | None = None,
        keyfile: Path | str | None = None,
        admission: Admission | None = None,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ConfigError("TLS needs both certfile and keyfile")
        self.creds_path = Path(creds_path).expanduser()
        self.host = host
        self.port = port
        self.ws_port = ws_port
        self.prefix = Topics(prefix).prefix  # validates
        self.certfile = Path(certfile) if certfile is not None else None
        self.keyfile = Path(keyfile) if keyfile is not None else None
        # Connection bounds and the failed-login budget; kept across restarts.
        self.admission = admission or Admission()
        self._broker: FleetBroker | None = None

    @property
    def running(self) -> bool:
        return self._broker is not None

    @property
    def amqtt_broker(self) -> FleetBroker | None:
        """The amqtt broker while it runs (its sessions, its subscriptions)."""
        return self._broker

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.certfile else "mqtt"
        return f"{scheme}://{_host_for_url(self.host)}:{self.port}"

    def config(self) -> dict[str, Any]:
        """The amqtt broker config this runs with."""
        default: dict[str, Any] = {"type": "tcp", "bind": _bind(self.host, self.port)}
        if self.certfile is not None:
            default |= {"ssl": True, "certfile": str(self.certfile), "keyfile": str(self.keyfile)}
        listeners: dict[str, Any] = {"default": default}
        if self.ws_port is not None:
            listeners["ws"] = {"type": "ws", "bind": _bind(self.host, self.ws_port)}
        creds = str(self.creds_path)
        return {
            "listeners": listeners,
            # Persistent sessions end an hour after their client left (fleet/auth/limits.py).
            "session_expiry_interval": SESSION_EXPIRY_S,
            # Only ours: no anonymous plugin, no $SYS, no per-packet/event loggers.
            "plugins": {
                _AUTH_PLUGIN: {
                    "credentials_file": creds,
                    "allow_anonymous": False,
                    "prefix": self.prefix,
                },
                _TOPIC_PLUGIN: {"credentials_file": creds, "prefix": self.prefix},
            },
        }

    async def start(self) -> None:
        if self._broker is not None:
            return
        where = f"{self.host}:{self.port}" + (f" (ws {self.ws_port})" if self.ws_port else "")
        try:
            # Config errors (a missing TLS file) surface here, bind errors in start().
            broker = FleetBroker(self.config(), self.admission)
        except (AMQTTError, ValueError, OSError) as exc:
            raise ConfigError(f"cannot start the broker on {where}: {exc}") from exc
        try:
            await broker.start()
        except BrokerError as exc:
            await _close_servers(broker)
            raise ConfigError(
                f"cannot start the broker on {where}: {exc.__cause__ or exc}"
            ) from exc
        self._broker = broker
        # Report the real ports when 0 asked the OS to pick.
        for name, server in broker._servers.items():
            sockets = getattr(server.instance, "sockets", None) or ()
            for sock in sockets:
                port = sock.getsockname()[1]
                if name == "default":
                    self.port = port
                elif name == "ws":
                    self.ws_port = port
                break

    async def stop(self) -> None:
        """Close every connection and free the ports; safe to call twice."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await broker.shutdown()
        except Exception:
            log.exception("broker shutdown failed; closing its listeners")
            await _close_servers(broker)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Run until cancelled (Ctrl-C in `fleet broker run`), then stop."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()


MQTT5_LEVEL = 5


class Mqtt5Refused(AMQTTError):
    """An MQTT 5 CONNECT, answered with CONNACK 0x01 (amqtt logs it once, as it fails)."""


# CONNACK of MQTT 3.1.1: no session present, return code 0x01 (unacceptable protocol version).
CONNACK_UNACCEPTABLE_PROTOCOL = bytes([0x20, 0x02, 0x00, 0x01])


class _Replay(ReaderAdapter):
    """A reader that first hands out bytes already read from `inner`, then reads on."""

    def __init__(self, inner: ReaderAdapter, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    async def read(self, n: int = -1) -> bytes:
        if not self._prefix:
            data: bytes = await self._inner.read(n)
            return data
        if n == -1:
            head, self._prefix = self._prefix, b""
            rest: bytes = await self._inner.read(-1)
            return head + rest
        head, self._prefix = self._prefix[:n], self._prefix[n:]
        if len(head) < n:
            head += await self._inner.read(n - len(head))
        return head

    def feed_eof(self) -> None:
        self._inner.feed_eof()


async def _read_up_to(reader: ReaderAdapter, n: int) -> bytes:
    """Up to `n` bytes (fewer only at EOF or a broken connection)."""
    data = b""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, NoDataError):
        while len(data) < n:
            chunk = await reader.read(n - len(data))
            if not chunk:
                break
            data += chunk
    return data


async def _refuse_mqtt5(reader: ReaderAdapter, writer: WriterAdapter, peer: str) -> ReaderAdapter:
    """Peek at the CONNECT's protocol level; refuse MQTT 5, else hand the bytes back.

    Reads the fixed header and the variable header up to the protocol level (at most 12
    bytes), so nothing beyond the CONNECT's start is taken from the stream.
    """
    head = await _read_up_to(reader, 1)
    if head != b"\x10":  # not a CONNECT: amqtt says what is wrong with it
        return _Replay(reader, head)
    for _ in range(4):  # remaining length: 1 to 4 bytes, high bit = more follow
        byte = await _read_up_to(reader, 1)
        head += byte
        if not byte or byte[0] < 0x80:
            break
    # Protocol name (length 4, "MQTT") and level.
    head += await _read_up_to(reader, 7)
    if head[-7:-1] == b"\x00\x04MQTT" and head[-1] == MQTT5_LEVEL:
        with contextlib.suppress(Exception):
            writer.write(CONNACK_UNACCEPTABLE_PROTOCOL)
            await writer.drain()
        with contextlib.suppress(Exception):
            await writer.close()
        msg = (
            f"MQTT 5 CONNECT from {peer} refused with CONNACK 0x01: the embedded amqtt broker"
            " speaks MQTT 3.1.1 only (run Mosquitto, the default engine, for MQTT 5)"
        )
        raise Mqtt5Refused(msg)
    return _Replay(reader, head)


async def _close_servers(broker: Broker) -> None:
    for server in broker._servers.values():
        with contextlib.suppress(Exception):
            await server.close_instance()


def _bind(host: str, port: int) -> str:
    return f"{_host_for_url(host)}:{port}"


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
