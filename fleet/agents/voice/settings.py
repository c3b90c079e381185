"""Which backend each voice stage uses: FLEET_VOICE_* environment variables (or a .env).

Offline by default (pocketsphinx, espeak-ng, the fleet grammar). Point `openai_url` at any
OpenAI-compatible server and choose per stage: `stt=openai`, `tts=openai`, and an
`llm_model` for the brain. Nothing is downloaded at run time.
"""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.agents.voice.actions import FleetActions
from fleet.agents.voice.brain import Brain, FleetBrain, LLMBrain
from fleet.agents.voice.stt import OpenAISTT, PocketSphinxSTT, SpeechToText
from fleet.agents.voice.tts import EspeakTTS, OpenAITTS, TextToSpeech
from fleet.errors import ConfigError


class VoiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_VOICE_", env_file=".env", extra="ignore")

    stt: Literal["pocketsphinx", "openai"] = "pocketsphinx"
    tts: Literal["espeak", "openai"] = "espeak"
    openai_url: str | None = None  # e.g. http://127.0.0.1:8080/v1
    openai_key: str | None = None
    stt_model: str = "whisper-1"
    tts_model: str = "tts-1"
    tts_voice: str = "alloy"
    llm_model: str | None = None  # set: the brain is the LLM, with the fleet as tools
    timeout_s: float = 8.0  # per request to an endpoint
    espeak_voice: str = "en-us"
    espeak_wpm: int = 165
    reject_below: float = -3.6  # pocketsphinx grammar rejection (see stt.py)

    def _url(self, what: str) -> str:
        if not self.openai_url:
            raise ConfigError(
                f"{what} uses an OpenAI-compatible endpoint: set FLEET_VOICE_OPENAI_URL"
            )
        return self.openai_url

    def build_stt(self) -> SpeechToText:
        if self.stt == "openai":
            return OpenAISTT(self._url("stt"), self.openai_key, self.stt_model, self.timeout_s)
        return PocketSphinxSTT(self.reject_below)

    def build_tts(self) -> TextToSpeech:
        if self.tts == "openai":
            return OpenAITTS(
                self._url("tts"), self.openai_key, self.tts_model, self.tts_voice, self.timeout_s
            )
        return EspeakTTS(self.espeak_voice, self.espeak_wpm)

    def build_brain(self, actions: FleetActions) -> Brain:
        if self.llm_model:
            return LLMBrain(
                actions, self._url("llm"), self.openai_key, self.llm_model, self.timeout_s
            )
        return FleetBrain(actions)
