"""Text-to-speech: text → 48 kHz mono int16, for an agent's `speak` and the controller's
announcements.

`EspeakTTS` runs espeak-ng (Debian package) offline; `OpenAITTS` asks any
OpenAI-compatible /audio/speech for a WAV.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Protocol

import numpy as np

from fleet.errors import ConfigError
from fleet.speech.audio import VoiceError, decode_audio
from fleet.speech.http import post

ESPEAK_TIMEOUT_S = 10.0


class TextToSpeech(Protocol):
    name: str

    async def synthesize(self, text: str) -> np.ndarray:
        """48 kHz mono int16 samples saying `text`."""
        ...


class EspeakTTS:
    name = "espeak-ng"

    def __init__(self, voice: str = "en-us", words_per_minute: int = 165) -> None:
        binary = shutil.which("espeak-ng")
        if binary is None:
            raise ConfigError("espeak-ng is not installed: apt-get install espeak-ng")
        self.binary, self.voice, self.wpm = binary, voice, words_per_minute

    async def synthesize(self, text: str) -> np.ndarray:
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            "-v",
            self.voice,
            "-s",
            str(self.wpm),
            "--stdout",
            "--",
            text,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(ESPEAK_TIMEOUT_S):
                wav, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise VoiceError(f"espeak-ng took over {ESPEAK_TIMEOUT_S}s") from None
        if proc.returncode != 0:
            raise VoiceError(f"espeak-ng failed ({proc.returncode}): {err.decode()[:200]}")
        return decode_audio(wav, "espeak-ng")


class OpenAITTS:
    """Any OpenAI-compatible text-to-speech endpoint (POST {url}/audio/speech)."""

    name = "openai"

    def __init__(self, url: str, key: str | None, model: str, voice: str, timeout_s: float):
        self.url = url.rstrip("/") + "/audio/speech"
        self.key, self.model, self.voice, self.timeout_s = key, model, voice, timeout_s

    async def synthesize(self, text: str) -> np.ndarray:
        body = {"model": self.model, "input": text, "voice": self.voice, "response_format": "wav"}
        data = await post(self.url, self.key, self.timeout_s, json=body)
        if not isinstance(data, bytes):
            raise VoiceError(f"text-to-speech at {self.url}: expected audio, got JSON")
        return decode_audio(data, self.url)
