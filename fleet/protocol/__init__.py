"""The one wire contract: topics and payload models (docs/protocol.md)."""

from fleet.protocol.messages import *  # noqa: F403
from fleet.protocol.messages import MAX_PAYLOAD_BYTES, decode, decode_for, encode, json_schemas
from fleet.protocol.topics import (
    DEFAULT_PREFIX,
    ID_PATTERN,
    ID_RULE,
    ParsedTopic,
    TopicKind,
    Topics,
    is_valid_id,
)

__all__ = [
    "DEFAULT_PREFIX",
    "ID_PATTERN",
    "ID_RULE",
    "MAX_PAYLOAD_BYTES",
    "ParsedTopic",
    "TopicKind",
    "Topics",
    "decode",
    "decode_for",
    "encode",
    "is_valid_id",
    "json_schemas",
]
