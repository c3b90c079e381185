"""Sample-rate conversion between the mesh's 48 kHz and what the speech stages use (kept in
fleet.speech.audio, which the controller's announcements share)."""

from __future__ import annotations

from fleet.speech.audio import STT_RATE, VoiceError, decode_audio, resample, wav_bytes

__all__ = ["STT_RATE", "VoiceError", "decode_audio", "resample", "wav_bytes"]
