"""Real audio between participants: aiortc peer connections in a full mesh, audio sources
and sinks, codec and direction negotiation from declared capabilities, per-peer stats.

The audio format everywhere inside is 48 kHz mono s16 in 20 ms frames (fleet.media.frames).
"""

from fleet.media.config import MediaConfig
from fleet.media.errors import MediaError, MediaNotSupported
from fleet.media.mesh import MediaMesh
from fleet.media.sinks import (
    AudioSink,
    CaptureSink,
    FanoutSink,
    LevelMeter,
    NullSink,
    WavRecorder,
)
from fleet.media.sources import (
    PushSource,
    SharedSource,
    SilenceSource,
    ToneSource,
    WavSource,
)

__all__ = [
    "AudioSink",
    "CaptureSink",
    "FanoutSink",
    "LevelMeter",
    "MediaConfig",
    "MediaError",
    "MediaMesh",
    "MediaNotSupported",
    "NullSink",
    "PushSource",
    "SharedSource",
    "SilenceSource",
    "ToneSource",
    "WavRecorder",
    "WavSource",
]
