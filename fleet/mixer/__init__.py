"""The mixed media path: Janus AudioBridge, driven by the meeting server only.

`janus.py` speaks Janus's API over WebSocket, `audiobridge.py` the plugin's requests,
`pool.py` chooses among mixers and notices the dead, `process.py` runs a local Janus.
"""

from fleet.mixer.errors import MixerError, MixerFailed, MixerUnavailable

__all__ = ["MixerError", "MixerFailed", "MixerUnavailable"]
