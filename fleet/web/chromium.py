"""Headless Debian Chromium for the console's browser tests and bench.

Playwright drives it (the `playwright` package; its own browser download is never used:
`apt-get install chromium`). The fake microphone plays a WAV tone, so what devices hear
from the browser can be told apart by frequency.
"""

from __future__ import annotations

import shutil
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
)


def chromium_path() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def tone_wav(path: Path, freq_hz: float, seconds: float = 10.0, rate: int = 48000) -> Path:
    """A mono 16-bit WAV of a sine at `freq_hz` (Chromium loops the fake capture file)."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


async def launch(pw: Playwright, user_data_dir: Path, mic_wav: Path | None) -> BrowserContext:
    """One Chromium with a fresh profile in `user_data_dir` and a fake microphone."""
    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("Chromium is not installed (apt-get install chromium)")
    args = list(CHROMIUM_ARGS)
    if mic_wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={mic_wav}")
    return await pw.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=executable,
        headless=True,
        args=args,
        viewport={"width": 1100, "height": 720},
    )
