"""The one wire contract: topics and payload models (docs/protocol.md).

Topics and the model-free names (`constants`) load with the package; the payload models
(pydantic) load on first use of one of their names, so a command that needs only topics
and names (the CLI's --help, completion) starts without building them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fleet.protocol.topics import (
    DEFAULT_PREFIX,
    ID_PATTERN,
    ID_RULE,
    ParsedTopic,
    TopicKind,
    Topics,
    is_valid_id,
)

if TYPE_CHECKING:
    from fleet.protocol.messages import *  # noqa: F403
    from fleet.protocol.messages import (
        MAX_PAYLOAD_BYTES,
        decode,
        decode_for,
        encode,
        json_schemas,
    )


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    messages = importlib.import_module("fleet.protocol.messages")
    try:
        return getattr(messages, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


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
