"""MQTT connections: broker URLs, clients, and a reconnecting message loop.

paho-mqtt drives the wire through aiomqtt. Devices and participants speak MQTT
3.1.1 (as esp-mqtt does); the controller and the operator's tools ask for
`MqttVersion.AUTO`: MQTT 5 where the broker speaks it, else 3.1.1 (a broker that
refuses an MQTT 5 CONNECT is remembered and asked in 3.1.1 at once). What MQTT 5
adds is used only in this package (docs/protocol.md §13 says what each does on
3.1.1): `publish` sets message expiry and response topic + correlation data, and
raises `PublishRefused` on a PUBACK reason code; `subscribe` raises
`SubscribeRefused` on a refused filter (SUBACK 0x80 on 3.1.1 too); `reply_of`
reads the response topic of a request.

Callers give a `Link` handler; the loop keeps the connection up,
calls `on_connect` after every (re)connect and feeds each message to
`on_message`. A handler's exception is logged and dropped, never raised into
the loop: one bad message must not take a device or the controller down.

Modules: `url` (broker URLs), `client` (the client, its last will, the MQTT 5
fallback, SUBSCRIBE), `socket_io` (paho's socket fast paths), `paho_objects`
(paho's per-message objects made cheap), `link` (the
reconnecting connection), `reader` (the read loop), `publish` (PUBLISH and
MQTT 5 request/reply).
"""

from fleet.mqtt import paho_objects  # noqa: F401 - paho's per-message objects made cheap
from fleet.mqtt.client import (
    CONNECT_TIMEOUT_S,
    KEEPALIVE_S,
    LastWill,
    MqttClient,
    make_client,
    open_client,
    own_client_id,
    subscribe,
)
from fleet.mqtt.link import (
    RECONNECT_FIRST_S,
    RECONNECT_MAX_S,
    OnConnect,
    cancel_and_wait,
    run_link,
)
from fleet.mqtt.publish import Reply, publish, publish_nowait, reply_of
from fleet.mqtt.reader import OnMessage, RestartLink, payload_bytes
from fleet.mqtt.url import BrokerUrl, MqttVersion

__all__ = [
    "CONNECT_TIMEOUT_S",
    "KEEPALIVE_S",
    "RECONNECT_FIRST_S",
    "RECONNECT_MAX_S",
    "BrokerUrl",
    "LastWill",
    "MqttClient",
    "MqttVersion",
    "OnConnect",
    "OnMessage",
    "Reply",
    "RestartLink",
    "cancel_and_wait",
    "make_client",
    "open_client",
    "own_client_id",
    "payload_bytes",
    "publish",
    "publish_nowait",
    "reply_of",
    "run_link",
    "subscribe",
]
