"""The voice agents: `VoiceAgent` (the assistant) and `TranscriberAgent`.

Per remote speaker, an `Endpointer` cuts the decoded audio into turns. A finished turn
goes through speech-to-text and the brain, one turn at a time, in order; the answer is
synthesized and said to everyone. Anyone who starts talking while the agent speaks
interrupts it (barge-in): everything queued to be said is dropped at once, and so is the
answer of a turn still being worked out. A stage that fails or takes too long (a backend
down or slow) gets one log line and the spoken `CANNOT`, never a hung agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
from aiortc import MediaStreamTrack

from fleet.agents import Agent, AgentContext
from fleet.agents.voice.actions import ApiLink, FleetActions
from fleet.agents.voice.audio import STT_RATE, VoiceError, resample
from fleet.agents.voice.brain import Brain, Turn
from fleet.agents.voice.endpoint import EndpointConfig, Endpointer, Utterance
from fleet.agents.voice.stt import SpeechToText
from fleet.agents.voice.tts import TextToSpeech
from fleet.errors import FleetError
from fleet.media.config import MediaConfig
from fleet.media.frames import SAMPLE_RATE, samples_of
from fleet.media.sources import PushSource
from fleet.protocol.messages import ApiOp, ApiRequest, TranscriptLine

log = logging.getLogger("fleet.agents")

CANNOT = "I can't do that right now."
TURN_TIMEOUT_S = 20.0  # speech-to-text + brain of one turn, whatever the backends do
MAX_ANSWER_S = 60.0


def wall(monotonic: float) -> float:
    return time.time() - (time.monotonic() - monotonic)


@dataclass(frozen=True)
class Interruption:
    """One barge-in: when the talker's speech was heard starting (its first voiced frame's
    arrival, monotonic), when the answer was cut off, and how much of it was dropped."""

    heard: float
    stopped: float
    dropped_s: float


@dataclass
class Said:
    """One answer: its text, and when its audio was handed to the mesh (monotonic)."""

    text: str
    queued: float
    turn: Turn | None


class VoiceAgent(Agent):
    name = "assistant"

    def __init__(
        self,
        stt: SpeechToText,
        tts: TextToSpeech | None,
        make_brain: Callable[[FleetActions], Brain] | None,
        endpoint: EndpointConfig | None = None,
        turn_timeout_s: float = TURN_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.stt, self.tts, self.make_brain = stt, tts, make_brain
        self.endpoint = endpoint or EndpointConfig()
        self.turn_timeout_s = turn_timeout_s
        self.brain: Brain | None = None
        self.actions: FleetActions | None = None
        self.link: ApiLink | None = None
        self.turns: list[Turn] = []  # the transcript, one entry per understood turn
        self.said: list[Said] = []
        self.interruptions: list[Interruption] = []
        self._context: AgentContext | None = None
        self._endpointers: dict[str, Endpointer] = {}
        self._queue: asyncio.Queue[tuple[str, Utterance]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._generation = 0  # bumped by every barge-in: answers of older turns are dropped
        self._stack = contextlib.AsyncExitStack()

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self, context: AgentContext) -> None:
        self._context = context
        if self.make_brain is not None or self.needs_api:
            self.link = ApiLink(context.url, context.topics, f"{context.pid}-api")
            self._stack.push_async_callback(self.link.close)
            await self.link.ensure()
            self.actions = FleetActions(self.link, context.participant)
            await self.actions.refresh_rooms()
        if self.make_brain is not None and self.actions is not None:
            self.brain = self.make_brain(self.actions)
        self._worker = asyncio.create_task(self._work(), name=f"{context.pid}-turns")

    needs_api = False

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self._stack.aclose()

    def track_for(self, peer: str) -> MediaStreamTrack | None:
        voice = self._voices.get(peer)
        if voice is None:
            voice = self._voices[peer] = PushSource(max_buffer_s=MAX_ANSWER_S)
        return voice

    # --- ears ---------------------------------------------------------------------------------
    def hear(self, peer: str, frame: av.AudioFrame) -> None:
        ep = self._endpointers.get(peer)
        if ep is None:
            ep = self._endpointers[peer] = Endpointer(
                lambda at: self._speech_started(peer, at),
                lambda utt: self._queue.put_nowait((peer, utt)),
                self.endpoint,
            )
        ep.feed(samples_of(frame), time.monotonic())

    def hears_from(self, peer: str) -> bool:
        """Whether audio from `peer` has reached us yet."""
        return peer in self._endpointers

    @property
    def listening(self) -> bool:
        """Its turn worker runs: heard turns are still taken (it is not hung on one)."""
        return self._worker is not None and not self._worker.done()

    @property
    def speaking(self) -> bool:
        return any(v.queued_samples > 0 and v.readyState == "live" for v in self._voices.values())

    def _speech_started(self, peer: str, at: float) -> None:
        if self.speaking:
            self.interrupt(f"{self.name_of(peer)} talked over it", heard=at)

    def interrupt(self, why: str, heard: float | None = None) -> None:
        """Barge-in: stop talking now and drop whatever was still to be said."""
        self._generation += 1
        dropped = sum(v.clear() for v in self._voices.values())
        dropped_s = dropped / SAMPLE_RATE / max(1, len(self._voices))
        now = time.monotonic()
        self.interruptions.append(Interruption(now if heard is None else heard, now, dropped_s))
        log.info("%s: stopped talking (%s); %.1fs of speech dropped", self.name, why, dropped_s)

    # --- turns --------------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            peer, utt = await self._queue.get()
            generation = self._generation
            try:
                async with asyncio.timeout(self.turn_timeout_s):
                    answer = await self._take_turn(peer, utt)
            except TimeoutError:
                log.warning(
                    "%s: a turn took over %gs; answering that it cannot",
                    self.name,
                    self.turn_timeout_s,
                )
                answer = CANNOT
            except (VoiceError, FleetError) as exc:
                log.warning("%s: %s", self.name, exc)
                answer = CANNOT
            except Exception:  # a brain's bug must not end the agent
                log.exception("%s: turn failed", self.name)
                answer = CANNOT
            if answer and self.tts is not None:
                await self._say(answer, generation)

    async def _take_turn(self, peer: str, utt: Utterance) -> str | None:
        if self.link is not None:
            await self.link.ensure()  # the registry and rooms the grammar is made of
        phrases = self.brain.phrases() if self.brain is not None else self.phrases()
        log.debug("listening for %d phrases: %s", len(phrases or ()), phrases)
        transcript = await self.stt.transcribe(
            resample(utt.samples, SAMPLE_RATE, STT_RATE), phrases
        )
        if not transcript.text:
            score = "" if transcript.confidence is None else f" (score {transcript.confidence:.2f})"
            log.info("%s spoke %.1fs: no command%s", self.name_of(peer), utt.end - utt.start, score)
            return None
        info = self._context.participant.peers.get(peer) if self._context else None
        turn = Turn(
            peer, info.pid if info else peer, transcript.text, wall(utt.start), wall(utt.end)
        )
        self.turns.append(turn)
        score = "" if transcript.confidence is None else f" (score {transcript.confidence:.2f})"
        log.info("%s said: %s%s", self.name_of(peer), turn.text, score)
        await self.on_turn(turn)
        return await self.brain.respond(turn) if self.brain is not None else None

    def phrases(self) -> list[str] | None:
        """What to listen for without a brain (None: anything)."""
        return None

    async def on_turn(self, turn: Turn) -> None:
        """Every understood turn, before the brain sees it."""

    async def _say(self, text: str, generation: int) -> None:
        assert self.tts is not None
        try:
            samples = await self.tts.synthesize(text)
        except VoiceError as exc:
            log.warning("%s: cannot say %r: %s", self.name, text, exc)
            return
        if generation != self._generation:
            log.info("%s: answer dropped, someone spoke meanwhile: %s", self.name, text)
            return
        self.speak(samples)
        self.said.append(Said(text, time.monotonic(), self.turns[-1] if self.turns else None))
        log.info("%s answers: %s", self.name, text)


class TranscriberAgent(VoiceAgent):
    """Writes who said what, and when, into the session history (api `transcribe`)."""

    name = "transcriber"
    media = MediaConfig(mic=False)
    needs_api = True

    def __init__(self, stt: SpeechToText, endpoint: EndpointConfig | None = None) -> None:
        super().__init__(stt, None, None, endpoint)

    def track_for(self, peer: str) -> MediaStreamTrack | None:
        return None

    async def on_turn(self, turn: Turn) -> None:
        participant = self._context.participant if self._context else None
        if participant is None or participant.session is None or self.link is None:
            return
        line = TranscriptLine(
            session=participant.session,
            participant=turn.participant,
            pid=turn.pid,
            start=turn.start,
            end=turn.end,
            text=turn.text[:4096],
        )
        result = await (await self.link.ensure()).request(
            ApiOp.TRANSCRIBE, ApiRequest(room=participant.room, line=line, timeout_s=5)
        )
        if not result.ok:
            log.warning("%s: transcript line refused: %s %s", self.name, result.code, result.detail)
