"""What the controller sends a device for an announcement (protocol.md 14), as the firmware
tests publish it themselves, and how they read what the host device's speaker played."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import av
import numpy as np

from fleet.media.encoding import FrameEncoder

RATE = 48_000  # the host device's speaker WAV
FRAME = RATE // 50  # 20 ms at 48 kHz
WINDOW = RATE // 10  # analysis windows of 100 ms


# --- what the controller sends -----------------------------------------------------------------


def tone_frames(codec: str, hz: float, seconds: float, amp: float = 0.3) -> list[bytes]:
    """`seconds` of a tone, encoded as the controller encodes an announcement: 20 ms frames of
    Opus (48 kHz mono) or PCMU (8 kHz, 160 bytes)."""
    n = round(seconds * 50)
    t = np.arange(n * FRAME) / RATE
    pcm = (amp * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    enc = FrameEncoder(codec)
    out: list[bytes] = []
    for i in range(n + 3):  # Opus holds back a little: push silence through to flush it
        chunk = pcm[i * FRAME : (i + 1) * FRAME] if i < n else np.zeros(FRAME, np.int16)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        out.extend(bytes(p) for p in enc.encode(frame))
    return out[:n]


def chunks(ann: str, codec: str, frames: list[bytes], priority: str = "normal") -> list[bytes]:
    """AnnounceChunk payloads of 10 frames (200 ms) each, the last one marked."""
    out = []
    for seq, i in enumerate(range(0, len(frames), 10)):
        part = frames[i : i + 10]
        doc: dict[str, Any] = {
            "ann": ann,
            "seq": seq,
            "codec": codec,
            "frames": [base64.b64encode(f).decode() for f in part],
            "priority": priority,
        }
        if i + 10 >= len(frames):
            doc["last"] = True
        out.append(json.dumps(doc).encode())
    return out


def announce_cmd(cmd_id: str, ann: str, duration_ms: int, priority: str = "normal") -> bytes:
    args = {"ann": ann, "priority": priority, "duration_ms": duration_ms}
    return json.dumps(
        {"id": cmd_id, "op": "announce", "args": args, "ttl_ms": duration_ms + 10_000}
    ).encode()


# --- what the speaker played -------------------------------------------------------------------


def speaker(path: Path) -> np.ndarray:
    data = path.read_bytes()[44:] if path.exists() else b""
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")


def amplitude(x: np.ndarray, hz: float) -> float:
    """Amplitude (0..1 of full scale) of the hz component of x."""
    t = np.arange(x.size) / RATE
    c = np.sum(x * np.exp(-2j * np.pi * hz * t))
    return float(2 * abs(c) / max(x.size, 1) / 32767)


def windows_with(x: np.ndarray, hz: float, at_least: float) -> int:
    """How many 100 ms windows of x hold the tone at `at_least` amplitude or more."""
    return sum(
        amplitude(x[i : i + WINDOW], hz) >= at_least for i in range(0, x.size - WINDOW, WINDOW)
    )
