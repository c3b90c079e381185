"""Text-to-speech for the voice pipeline: the engines live in fleet.speech.tts (the
controller's announcements use them too)."""

from __future__ import annotations

from fleet.speech.tts import ESPEAK_TIMEOUT_S, EspeakTTS, OpenAITTS, TextToSpeech

__all__ = ["ESPEAK_TIMEOUT_S", "EspeakTTS", "OpenAITTS", "TextToSpeech"]
