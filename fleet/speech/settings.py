"""Which text-to-speech engine speaks outside the voice agent (the controller's
announcements): the same FLEET_VOICE_* variables (or .env) as the voice pipeline's."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.errors import ConfigError
from fleet.speech.tts import EspeakTTS, OpenAITTS, TextToSpeech


class SpeechSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_VOICE_", env_file=".env", extra="ignore")

    tts: Literal["espeak", "openai"] = "espeak"
    openai_url: str | None = None
    openai_key: str | None = None
    tts_model: str = "tts-1"
    tts_voice: str = "alloy"
    timeout_s: float = 8.0
    espeak_voice: str = "en-us"
    espeak_wpm: int = 165

    def build_tts(self) -> TextToSpeech:
        if self.tts == "openai":
            if not self.openai_url:
                raise ConfigError(
                    "tts uses an OpenAI-compatible endpoint: set FLEET_VOICE_OPENAI_URL"
                )
            return OpenAITTS(
                self.openai_url, self.openai_key, self.tts_model, self.tts_voice, self.timeout_s
            )
        return EspeakTTS(self.espeak_voice, self.espeak_wpm)
