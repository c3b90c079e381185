"""fleet.media with real audio: aiortc peer connections on this host, wired to each other
directly (SDP strings passed by hand, no MQTT), real Opus and G.711, FFT on what arrives."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from aiortc import RTCIceServer
from aiortc.mediastreams import MediaStreamError

from fleet.media import (
    CaptureSink,
    FanoutSink,
    LevelMeter,
    MediaConfig,
    MediaError,
    MediaMesh,
    MediaNotSupported,
    PushSource,
    SharedSource,
    SilenceSource,
    ToneSource,
    WavRecorder,
    WavSource,
)
from fleet.media.analysis import (
    dominant_frequencies,
    find_markers,
    hears,
    marker_latencies,
    tone_power,
)
from fleet.media.frames import SAMPLE_RATE
from fleet.protocol.messages import Capabilities, PeerAudioStats
from tests.support import ROOT
from tests.support.netns import require_netns
from tests.support.running import wait_for

# Far from each other and from each other's first harmonics, and below G.711's 4 kHz.
TONES = {"p1": 440.0, "p2": 1010.0, "p3": 2270.0}


class Party:
    """One participant: its mesh, what it sends and what it captured."""

    def __init__(
        self, name: str, config: MediaConfig, source: SharedSource | None, sink: object = None
    ) -> None:
        self.name = name
        self.config = config
        self.source = source
        self.capture = CaptureSink()
        sink = FanoutSink(self.capture, sink) if sink is not None else self.capture
        self.mesh = MediaMesh(config, source or (lambda peer: None), sink)

    @property
    def caps(self) -> Capabilities:
        return self.config.capabilities()

    async def stats(self) -> dict[str, PeerAudioStats]:
        return {s.peer: s for s in await self.mesh.stats()}


@pytest_asyncio.fixture
async def parties() -> AsyncIterator[Callable[..., Party]]:
    made: list[Party] = []

    def make(name: str, tone: float | None = None, **config: object) -> Party:
        source = SharedSource(ToneSource(tone)) if tone is not None else None
        party = Party(name, MediaConfig(**config), source)  # type: ignore[arg-type]
        made.append(party)
        return party

    make.made = made  # type: ignore[attr-defined]
    yield make
    for party in made:
        await party.mesh.close()
        if party.source is not None:
            party.source.stop()


async def link(offerer: Party, answerer: Party) -> None:
    """What the signalling does: offer, answer, accept."""
    offer = await offerer.mesh.create_offer(answerer.name, answerer.caps)
    answer = await answerer.mesh.accept_offer(offerer.name, offerer.caps, offer)
    await offerer.mesh.accept_answer(answerer.name, answer)


async def full_mesh(*members: Party) -> None:
    # As in a meeting: each newcomer offers to everyone already there.
    for i, newcomer in enumerate(members):
        for member in members[:i]:
            await link(newcomer, member)
    for party in members:
        await party.mesh.wait_connected()


async def received(party: Party, peer: str, seconds: float) -> None:
    """Until `party` holds `seconds` of audio from `peer`."""
    target = round(seconds * SAMPLE_RATE)
    await wait_for(
        lambda: party.capture.received_samples(peer) >= target,
        what=f"{seconds}s of audio from {peer} at {party.name}",
    )


# --- the whole mesh ---------------------------------------------------------------------------


async def test_three_participants_hear_the_others_and_not_themselves(parties) -> None:
    p1, p2, p3 = (parties(name, tone) for name, tone in TONES.items())
    await full_mesh(p1, p2, p3)
    for party in (p1, p2, p3):
        assert party.mesh.peers() == sorted(set(TONES) - {party.name})
    for party in (p1, p2, p3):
        for peer in party.mesh.peers():
            await received(party, peer, 1.5)

    for party in (p1, p2, p3):
        own = TONES[party.name]
        heard = np.concatenate([party.capture.samples(p, last_s=1.0) for p in party.mesh.peers()])
        for peer in party.mesh.peers():
            audio = party.capture.samples(peer, last_s=1.0)
            top = dominant_frequencies(audio, count=1)
            assert top, (party.name, peer)
            assert abs(top[0][0] - TONES[peer]) < 5, (party.name, peer, top)
            for other, freq in TONES.items():
                if other != peer:
                    assert tone_power(audio, freq) < 0.01, (party.name, peer, other)
        assert not hears(heard, own), f"{party.name} hears its own tone"
        assert all(hears(heard, TONES[p]) for p in party.mesh.peers())

    # Stats: packets both ways, no loss on loopback, Opus, jitter in ms; rtt once RTCP ran.
    async def rtt_known() -> bool:
        stats = await p1.stats()
        return all(s.rtt_ms is not None for s in stats.values())

    async with asyncio.timeout(8):
        while not await rtt_known():  # noqa: ASYNC110 - stats have no event to wait on
            await asyncio.sleep(0.25)
    # Interval figures (loss, level, bitrate) over one quiet second.
    for party in (p1, p2, p3):
        await party.stats()
    await asyncio.sleep(1.0)
    for party in (p1, p2, p3):
        stats = await party.stats()
        assert sorted(stats) == party.mesh.peers()
        for s in stats.values():
            assert s.codec == "opus"
            assert s.packets_sent > 50
            assert s.packets_received > 50
            assert s.packets_lost == 0
            assert s.loss == 0
            assert s.jitter_ms is not None
            assert 0 <= s.jitter_ms < 100
            # Mono Opus at 32 kbit/s (MediaConfig.opus_kbps) plus RTP, SRTP and RTCP: about
            # 30 kbit/s of headers at 50 packets a second. aiortc's own stereo 96 kbit/s
            # would be over 120.
            assert s.bitrate_kbps is not None
            assert 45 < s.bitrate_kbps < 110
            # A 0.3-amplitude sine has an RMS of 0.212; Opus keeps it within a few percent.
            assert s.level is not None
            assert 0.19 < s.level < 0.23
    for s in (await p1.stats()).values():
        assert s.rtt_ms is not None
        assert 0 < s.rtt_ms < 1000


async def test_remove_peer_stops_its_audio_and_keeps_the_rest(parties) -> None:
    p1, p2, p3 = (parties(name, tone) for name, tone in TONES.items())
    await full_mesh(p1, p2, p3)
    await received(p1, "p3", 0.3)
    await p1.mesh.remove_peer("p3")
    await p3.mesh.remove_peer("p1")
    await p1.mesh.remove_peer("nobody")  # unknown: nothing to do
    assert p1.mesh.peers() == ["p2"]
    before3, before2 = p1.capture.received_samples("p3"), p1.capture.received_samples("p2")
    await received(p1, "p2", before2 / SAMPLE_RATE + 0.5)
    assert p1.capture.received_samples("p3") == before3
    assert sorted(await p1.stats()) == ["p2"]
    # A peer that closes its side (DTLS close) is dropped by the others on their own.
    await p3.mesh.close()
    await wait_for(lambda: p2.mesh.peers() == ["p1"], what="p2 drops the closed p3")
    assert p2.mesh.failures == {}


# --- codecs -----------------------------------------------------------------------------------


async def test_pcmu_only_participant_talks_with_opus_and_pcmu(parties) -> None:
    board = parties("board", codecs=("pcmu",))
    board.source = SharedSource(ToneSource(1010.0, marker_every_s=0.5))
    board.mesh.source_for = board.source
    agent = parties("agent", 440.0)  # opus, pcmu, pcma
    await full_mesh(board, agent)
    await received(agent, "board", 2.0)
    await received(board, "agent", 1.0)

    assert (await board.stats())["agent"].codec == "pcmu"
    assert (await agent.stats())["board"].codec == "pcmu"
    assert dominant_frequencies(agent.capture.samples("board", 0.4), 1)[0][0] == pytest.approx(
        1010, abs=5
    )
    assert dominant_frequencies(board.capture.samples("agent", 1.0), 1)[0][0] == pytest.approx(
        440, abs=5
    )
    # The latency markers survive G.711 and 8 -> 48 kHz resampling, one per marker sent,
    # each arriving after it was "spoken".
    arrivals = agent.capture.marker_arrivals("board")
    sent = board.source.track.sent_markers()
    assert len(arrivals) >= 3
    assert len(sent) - 2 <= len(arrivals) <= len(sent)
    latencies = marker_latencies(sent, arrivals)
    assert len(latencies) == len(arrivals)
    assert all(0 < x < 0.5 for x in latencies)


async def test_no_common_codec_is_refused_before_any_sdp(parties) -> None:
    board = parties("board", 440.0, codecs=("pcma",))
    opus_only = Capabilities(audio=True, mic=True, speaker=True, codecs=["opus", "g722"])
    with pytest.raises(MediaError, match=r"no common codec with peer-x: we use pcma, it declares"):
        await board.mesh.create_offer("peer-x", opus_only)
    assert board.mesh.peers() == []
    # The same refusal when answering, before the offer is even looked at.
    agent = parties("agent", 440.0, codecs=("opus",))
    offer = await agent.mesh.create_offer("board", None)  # it did not know board's codecs
    with pytest.raises(MediaError, match="no common codec"):
        await board.mesh.accept_offer("agent", agent.caps, offer)


# --- directions from capabilities -------------------------------------------------------------


async def test_mic_less_and_speaker_less_participants(parties) -> None:
    full = parties("full", 440.0)
    listener = parties("listener", 1010.0, mic=False)  # speaker only: hears, never sends
    sender = parties("sender", 2270.0, speaker=False)  # mic only: heard, never sent audio
    await full_mesh(full, listener, sender)
    await received(full, "sender", 1.0)
    await received(listener, "full", 1.0)
    await received(listener, "sender", 1.0)

    assert hears(full.capture.samples("sender", 1.0), 2270.0)
    assert hears(listener.capture.samples("full", 1.0), 440.0)
    assert hears(listener.capture.samples("sender", 1.0), 2270.0)
    # Nothing ever came from the mic-less one, nothing ever reached the speaker-less one.
    assert full.capture.received_samples("listener") == 0
    assert sender.capture.peers() == []
    full_stats, listener_stats, sender_stats = (
        await full.stats(),
        await listener.stats(),
        await sender.stats(),
    )
    assert all(s.packets_sent == 0 for s in listener_stats.values())
    assert full_stats["listener"].packets_received == 0
    assert all(s.packets_received == 0 for s in sender_stats.values())
    assert all(s.level is None for s in sender_stats.values())
    assert full_stats["sender"].packets_sent == 0
    assert full_stats["sender"].packets_received > 20
    # We enforce it on our side too: a board declaring no speaker is sent nothing, even
    # when its SDP would take audio.
    board = parties("board", 700.0)
    no_speaker = Capabilities(audio=True, mic=True, speaker=False, codecs=["opus"])
    offer = await full.mesh.create_offer("board", no_speaker)
    assert "a=recvonly" in offer
    await full.mesh.accept_answer("board", await board.mesh.accept_offer("full", None, offer))
    await received(full, "board", 0.5)
    assert board.capture.received_samples("full") == 0
    assert (await full.stats())["board"].packets_sent == 0
    # Asking the speaker-less one to play is refused as such.
    with pytest.raises(MediaNotSupported, match="not supported: receiving audio"):
        sender.mesh.set_volume(50)
    with pytest.raises(MediaNotSupported, match="no speaker"):
        sender.config.require_speaker()


async def test_mute_sends_silence_and_volume_scales_the_level(parties) -> None:
    talker = parties("talker", 1010.0)
    ear = parties("ear", mic=False)
    await full_mesh(talker, ear)
    await received(ear, "talker", 0.5)

    async def level_over(seconds: float) -> float:
        # Stats give the level since their previous figure, at most every 0.25 s: callers
        # leave more than that between two measurements.
        await ear.stats()  # drains the level accumulated so far
        await asyncio.sleep(seconds)
        level = (await ear.stats())["talker"].level
        assert level is not None
        return level

    full = await level_over(0.4)
    ear.mesh.set_volume(50)
    await asyncio.sleep(0.3)
    half = await level_over(0.4)
    assert half / full == pytest.approx(0.5, abs=0.05)
    ear.mesh.set_volume(100)

    talker.mesh.set_mic(False)
    await asyncio.sleep(0.3)  # what is already in flight and in the jitter buffer
    frames_before = ear.capture.received_samples("talker")
    muted = await level_over(0.4)
    assert muted < 0.005
    assert ear.capture.received_samples("talker") > frames_before  # the stream goes on
    talker.mesh.set_mic(True)
    await asyncio.sleep(0.3)
    assert await level_over(0.4) == pytest.approx(full, rel=0.1)
    with pytest.raises(MediaError, match=r"0\.\.100"):
        ear.mesh.set_volume(101)


# --- bad input --------------------------------------------------------------------------------


async def test_bad_sdp_is_refused_and_the_other_peers_keep_flowing(parties) -> None:
    host, good, bad = parties("host", 440.0), parties("good", 1010.0), parties("bad", 2270.0)
    await full_mesh(host, good)
    offer = await bad.mesh.create_offer("host", host.caps)
    video_only = offer.replace("m=audio", "m=video")
    no_candidates = "\r\n".join(
        line for line in offer.split("\r\n") if not line.startswith("a=candidate")
    )
    cases = {
        "garbage": "hello, I am not SDP",
        "empty": "   ",
        "truncated": offer[: len(offer) // 3],
        "v=0 only": "v=0\r\n",
        "unparsable": "v=0\r\nm=audio x\r\n",
        "video": video_only,
        "no candidates": no_candidates,
    }
    for label, text in cases.items():
        with pytest.raises(MediaError, match="offer from bad") as err:
            await host.mesh.accept_offer("bad", bad.caps, text)
        assert "bad SDP" in str(err.value) or "cannot answer" in str(err.value), label
        assert host.mesh.peers() == ["good"], label
    with pytest.raises(MediaError, match="no offer is pending"):
        await host.mesh.accept_answer("stranger", offer)
    # A garbage answer to a real offer drops that peer, and only that one.
    await host.mesh.create_offer("late", bad.caps)
    with pytest.raises(MediaError, match="answer from late"):
        await host.mesh.accept_answer("late", "nonsense")
    assert host.mesh.peers() == ["good"]

    before = host.capture.received_samples("good")
    await received(host, "good", before / SAMPLE_RATE + 0.5)
    await received(good, "host", good.capture.received_samples("host") / SAMPLE_RATE + 0.5)
    assert hears(host.capture.samples("good", 0.5), 1010.0)


async def test_unanswered_offer_fails_clearly_after_the_connect_timeout(parties) -> None:
    failed: list[tuple[str, MediaError]] = []
    lonely = parties("lonely", 440.0, connect_timeout_s=0.8)
    lonely.mesh.on_peer_failed = lambda peer, error: failed.append((peer, error))
    other = parties("other", 1010.0)
    offer = await lonely.mesh.create_offer("other", other.caps)
    await other.mesh.accept_offer("lonely", lonely.caps, offer)  # the answer is "lost"
    with pytest.raises(MediaError, match=r"not connected within 0.8s"):
        await lonely.mesh.wait_connected("other", timeout=5)
    assert [peer for peer, _ in failed] == ["other"]
    assert lonely.mesh.peers() == []


def test_configuration_is_checked_up_front() -> None:
    config = MediaConfig()
    assert config.rtc_configuration().iceServers == []  # never the public STUN default
    assert config.capabilities() == Capabilities(
        audio=True, mic=True, speaker=True, codecs=["opus", "pcmu", "pcma"]
    )
    assert MediaConfig(codecs=("PCMU", "opus")).codecs == ("pcmu", "opus")
    servers = MediaConfig(
        ice_servers=("stun:192.168.1.1:3478", "turn:alice:s%40cret@10.0.0.2:3478")
    ).rtc_configuration()
    assert servers.iceServers == [
        RTCIceServer(urls="stun:192.168.1.1:3478"),
        RTCIceServer(urls="turn:10.0.0.2:3478", username="alice", credential="s@cret"),
    ]
    for bad, match in [
        ({"codecs": ("opus", "aac")}, r"unknown codecs \['aac'\]"),
        ({"codecs": ()}, "no codecs"),
        ({"ice_servers": ("http://stun.example",)}, "bad ICE server"),
        ({"ice_servers": ("stun:user:pw@host",)}, "only turn: URLs carry"),
        ({"connect_timeout_s": 0}, "positive"),
        ({"jitter_frames": -1}, "jitter_frames"),
        ({"mixer_jitter_frames": 9}, "mixer_jitter_frames"),
    ]:
        with pytest.raises(MediaError, match=match):
            MediaConfig(**bad)  # type: ignore[arg-type]


# --- sources, sinks and analysis --------------------------------------------------------------


def write_wav(path: Path, freq: float, rate: int, channels: int, seconds: float) -> None:
    t = np.arange(round(rate * seconds)) / rate
    mono = (0.4 * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(mono, channels).tobytes())


def read_wav(path: Path) -> tuple[int, int, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return wav.getframerate(), wav.getnchannels(), data


async def test_recorder_holds_every_participants_tone_and_wav_source_plays(
    parties, tmp_path: Path
) -> None:
    # A 16 kHz stereo file: WavSource must bring it to 48 kHz mono.
    clip = tmp_path / "clip.wav"
    write_wav(clip, 1500.0, 16_000, 2, 0.5)
    recorder, meter = WavRecorder(tmp_path / "rec", mix=True), LevelMeter()
    rec = Party("rec", MediaConfig(mic=False), None, FanoutSink(recorder, meter))
    parties.made.append(rec)  # closed with the others
    tone = parties("tone", 700.0)
    player = parties("player")
    player.source = SharedSource(WavSource(clip, loop=True))
    player.mesh.source_for = player.source
    await full_mesh(rec, tone, player)
    await received(rec, "tone", 1.5)
    await received(rec, "player", 1.5)
    # The meter saw both at their levels: RMS of a 0.3 sine 0.212, of the 0.4 clip 0.283.
    assert meter.level("tone") == pytest.approx(0.212, abs=0.02)
    assert meter.level("player") == pytest.approx(0.283, abs=0.03)
    assert meter.peers["tone"].frames >= 75
    assert meter.peers["tone"].first_frame_at is not None
    await rec.mesh.close()
    assert recorder.closed

    for peer, freq in (("tone", 700.0), ("player", 1500.0)):
        rate, channels, data = read_wav(recorder.paths[peer])
        assert (rate, channels) == (48_000, 1)
        assert data.size >= 1.5 * SAMPLE_RATE
        assert dominant_frequencies(data[-SAMPLE_RATE:], 1)[0][0] == pytest.approx(freq, abs=5)
    rate, _, mix = read_wav(recorder.mix_path)
    assert rate == 48_000
    assert hears(mix[-SAMPLE_RATE:], 700.0)
    assert hears(mix[-SAMPLE_RATE:], 1500.0)


async def test_sources_render_and_end(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="cannot read audio file"):
        WavSource(tmp_path / "missing.wav")
    with pytest.raises(MediaError, match="outside"):
        ToneSource(30_000)

    clip = tmp_path / "short.wav"  # 1000 samples, already 48 kHz mono: played as they are
    with wave.open(str(clip), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(np.arange(1000, dtype="<i2").tobytes())
    short = WavSource(clip, loop=False)
    first = await short.recv()
    assert (first.samples, first.sample_rate, first.pts) == (960, SAMPLE_RATE, 0)
    second = (await short.recv()).to_ndarray().reshape(-1)
    assert second[:40].tolist() == list(range(960, 1000))
    assert not second[40:].any()
    with pytest.raises(MediaStreamError):
        await short.recv()  # past the end: the track ends
    assert short.readyState == "ended"
    looped = WavSource(clip, loop=True)
    await looped.recv()
    assert (await looped.recv()).to_ndarray().reshape(-1)[40:45].tolist() == list(range(5))

    silence = await SilenceSource().recv()
    assert not silence.to_ndarray().any()

    push = PushSource(max_buffer_s=0.05)
    push.push(np.full(4800, 7, dtype=np.int16))  # 100 ms into a 50 ms buffer: oldest dropped
    assert push.queued_samples == 2400
    frame = (await push.recv()).to_ndarray().reshape(-1)
    assert frame.tolist() == [7] * 960
    push.stop()


async def test_bad_files_are_refused(tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not a sound file")
    with pytest.raises(MediaError, match=r"notes.wav"):
        WavSource(not_audio)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MediaError, match="cannot create recording directory"):
        WavRecorder(blocker / "sub")


def test_analysis_finds_tones_and_markers() -> None:
    tone = ToneSource(440.0, marker_every_s=0.25)
    audio = tone.render(0, SAMPLE_RATE)  # one second: markers at 0.25, 0.5, 0.75 s
    assert find_markers(audio) == tone.marker_samples(SAMPLE_RATE)
    assert len(tone.marker_samples(SAMPLE_RATE)) == 3
    plain = ToneSource(440.0).render(0, SAMPLE_RATE) + ToneSource(1500.0, 0.1).render(
        0, SAMPLE_RATE
    )
    peaks = dominant_frequencies(plain, count=3)
    assert [round(f) for f, _ in peaks] == [440, 1500]
    assert peaks[0][1] > peaks[1][1]
    assert tone_power(np.zeros(960, dtype=np.int16), 440.0) == 0.0
    assert find_markers(plain) == []


# --- a host with only loopback ----------------------------------------------------------------

NAMESPACE_PROBE = """
import asyncio
from fleet.media import MediaConfig, MediaError, MediaMesh, NullSink

async def main():
    mesh = MediaMesh(MediaConfig(), lambda peer: None, NullSink())
    try:
        await asyncio.wait_for(mesh.create_offer("peer", None), 20)
    except MediaError as exc:
        print("MediaError:", exc, "| peers:", mesh.peers())
    else:
        print("offer made")
    await mesh.close()

asyncio.run(main())
"""


def test_a_loopback_only_namespace_fails_clearly_instead_of_hanging() -> None:
    require_netns()
    name = f"fleet-media-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"ip netns add failed: {made.stderr.strip()}")
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        run = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c", NAMESPACE_PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    assert run.returncode == 0, run.stderr
    assert "MediaError: no ICE candidates" in run.stdout, run.stdout + run.stderr
    assert "loopback" in run.stdout
    assert "| peers: []" in run.stdout
