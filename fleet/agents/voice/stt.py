"""Speech-to-text: an utterance (16 kHz mono int16) → text.

`PocketSphinxSTT` is the offline default. Given the brain's phrases it decodes against a
JSGF grammar of exactly those (the only way pocketsphinx's general model copes with a
fleet's commands), and rejects speech that fits none: a grammar forces every utterance
onto its best phrase, so a turn whose words score below `reject_below` (mean acoustic log
score per voiced frame) is "no command". Without phrases it uses the general language
model. Loading the model holds the interpreter for about half a second (the GIL too, so
a thread does not help): build a `PocketSphinxSTT` before audio flows, never during a
meeting, where the stall would drop the audio this process sends. `OpenAISTT` posts a
WAV to any OpenAI-compatible /audio/transcriptions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pocketsphinx import Config, Decoder, get_model_path

from fleet.agents.voice.audio import STT_RATE, VoiceError, wav_bytes
from fleet.speech.http import post

log = logging.getLogger(__name__)

# Words the fleet uses that CMUdict lacks (ARPAbet, as the dictionary writes them).
EXTRA_WORDS = {"unmute": "AH N M Y UW T", "unmuted": "AH N M Y UW T IH D"}
# Digital silence (exact zeros, as Opus decodes it) gives the front end -inf log energies
# and the grammar search loses the ends of words; a floor of noise at about -56 dBFS
# (measured: std 50 of 32768) makes espeak-ng speech decode reliably.
NOISE_FLOOR = 50.0
_WORD = re.compile(r"^[a-z']+$")


@dataclass(frozen=True)
class Transcript:
    text: str  # "" when nothing was understood (or the grammar rejected it)
    confidence: float | None = None  # backend-specific; pocketsphinx: mean log score


class SpeechToText(Protocol):
    name: str

    async def transcribe(
        self, samples: np.ndarray, phrases: Sequence[str] | None = None
    ) -> Transcript:
        """16 kHz mono int16 → text; `phrases` are what the listener expects to hear."""
        ...


class PocketSphinxSTT:
    name = "pocketsphinx"

    def __init__(self, reject_below: float = -3.6, model_dir: str | None = None) -> None:
        self.reject_below = reject_below
        model = model_dir or os.path.join(get_model_path(), "en-us")
        config = Config()
        config["hmm"] = os.path.join(model, "en-us")
        config["dict"] = os.path.join(model, "cmudict-en-us.dict")
        config["lm"] = os.path.join(model, "en-us.lm.bin")
        config["samprate"] = STT_RATE
        config["loglevel"] = "FATAL"
        self._decoder = Decoder(config)
        for word, phones in EXTRA_WORDS.items():
            self._decoder.add_word(word, phones, True)
        self._lm_search = self._decoder.current_search()
        self._grammar_key: str | None = None
        self._lock = asyncio.Lock()
        self._rng = np.random.default_rng(0)
        self._skipped: set[str] = set()

    def knows(self, word: str) -> bool:
        return bool(_WORD.match(word)) and self._decoder.lookup_word(word) is not None

    async def transcribe(
        self, samples: np.ndarray, phrases: Sequence[str] | None = None
    ) -> Transcript:
        async with self._lock:  # one decoder, used from one thread at a time
            return await asyncio.to_thread(self._decode, samples, phrases)

    def _decode(self, samples: np.ndarray, phrases: Sequence[str] | None) -> Transcript:
        grammar = self._use_grammar(phrases)
        audio = samples.astype(np.float32) + self._rng.normal(0, NOISE_FLOOR, samples.size)
        pcm = np.clip(audio, -32768, 32767).astype(np.int16).tobytes()
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm, False, True)
        d.end_utt()
        hyp = d.hyp()
        if hyp is None or not hyp.hypstr:
            return Transcript("")
        if not grammar:
            return Transcript(hyp.hypstr)
        words = [s for s in d.seg() if not s.word.startswith(("<", "["))]
        frames = sum(s.end_frame - s.start_frame + 1 for s in words) or 1
        score = sum(math.log(max(s.ascore, 1e-300)) for s in words) / frames
        if score < self.reject_below:
            log.debug("rejected %r (score %.2f < %.2f)", hyp.hypstr, score, self.reject_below)
            return Transcript("", score)
        return Transcript(hyp.hypstr, score)

    def _use_grammar(self, phrases: Sequence[str] | None) -> bool:
        usable = [p for p in (phrases or ()) if self._speakable(p)]
        if not usable:
            if self._grammar_key is not None:
                self._decoder.activate_search(self._lm_search)
                self._grammar_key = None
            return False
        key = hashlib.sha1("\n".join(sorted(usable)).encode()).hexdigest()
        if key != self._grammar_key:
            body = " | ".join(sorted(set(usable)))
            self._decoder.add_jsgf_string(
                "fleet", f"#JSGF V1.0;\ngrammar fleet;\npublic <command> = {body};\n"
            )
            self._decoder.activate_search("fleet")
            self._grammar_key = key
        return True

    def _speakable(self, phrase: str) -> bool:
        unknown = [w for w in phrase.split() if not self.knows(w)]
        if unknown and phrase not in self._skipped:
            self._skipped.add(phrase)
            log.info("not in the speech model's dictionary, left out: %r (%s)", phrase, unknown)
        return not unknown


class OpenAISTT:
    """Any OpenAI-compatible speech-to-text endpoint (POST {url}/audio/transcriptions)."""

    name = "openai"

    def __init__(self, url: str, key: str | None, model: str, timeout_s: float) -> None:
        self.url = url.rstrip("/") + "/audio/transcriptions"
        self.key, self.model, self.timeout_s = key, model, timeout_s

    async def transcribe(
        self, samples: np.ndarray, phrases: Sequence[str] | None = None
    ) -> Transcript:
        data = {"model": self.model, "response_format": "json"}
        if phrases:
            data["prompt"] = ", ".join(list(phrases)[:50])
        files = {"file": ("turn.wav", wav_bytes(samples, STT_RATE), "audio/wav")}
        body = await post(self.url, self.key, self.timeout_s, data=data, files=files)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise VoiceError(f"speech-to-text at {self.url}: no text in the answer")
        return Transcript(text.strip())
