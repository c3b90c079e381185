"""One root error and a few leaves named for the failure; each carries its data."""

from __future__ import annotations


class FleetError(Exception):
    """Root of every error the platform raises on purpose."""


class ProtocolError(FleetError):
    """A payload or topic that does not follow docs/protocol.md."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"invalid {what}: {reason}")
        self.what = what
        self.reason = reason


class PayloadTooLarge(ProtocolError):
    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(what, f"payload of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


class BrokerUnavailable(FleetError):
    """The broker could not be reached or refused the connection."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot connect to broker {url}: {reason}")
        self.url = url
        self.reason = reason


class ControllerUnavailable(FleetError):
    """No controller answered an API request in time."""

    def __init__(self, op: str, waited_s: float) -> None:
        super().__init__(
            f"no controller answered {op!r} within {waited_s:g}s; is `fleet controller` running?"
        )
        self.op = op
        self.waited_s = waited_s


class UnknownDevice(FleetError):
    """A device the fleet has never seen: it never announced itself.

    `known`, when given, is how many devices the fleet does know, so a typo shows.
    """

    def __init__(self, device_id: str, known: int | None = None) -> None:
        if known is None:
            super().__init__(f"unknown device {device_id!r}: it never announced itself")
        else:
            super().__init__(f"unknown device {device_id!r} ({known} known; see `fleet devices`)")
        self.device_id = device_id
        self.known = known


class CredentialsError(FleetError):
    """A credentials file that cannot be read, or a user that cannot be added."""


class ConfigError(FleetError):
    """A setting or URL the platform cannot use."""


class BrokerRefused(FleetError):
    """The broker refused a publish or subscription (an MQTT reason code, e.g. the ACL)."""

    def __init__(self, what: str, topic: str, code: int, reason: str) -> None:
        super().__init__(
            f"the broker refused {what} {topic!r}: {reason} (reason code 0x{code:02x})"
        )
        self.topic = topic
        self.code = code
        self.reason = reason


class PublishRefused(BrokerRefused):
    def __init__(self, topic: str, code: int, reason: str) -> None:
        super().__init__("a publish to", topic, code, reason)


class SubscribeRefused(BrokerRefused):
    def __init__(self, topic_filter: str, code: int, reason: str) -> None:
        super().__init__("a subscription to", topic_filter, code, reason)


class RequestRefused(FleetError):
    """An API request refused on purpose (an unknown device, a part that will not host the
    intent's room): `code` and `detail` become the request's refused result."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
