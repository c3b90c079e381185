"""What is in a recorded buffer: tones by FFT, and latency markers to the sample.

Tests and the demo use it to show "each device hears the other two tones and not its own";
the latency bench uses find_markers().
"""

from __future__ import annotations

import numpy as np

from fleet.media.frames import FULL_SCALE, SAMPLE_RATE


def _spectrum(samples: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    x = samples.astype(np.float64) / FULL_SCALE
    x = x - x.mean()
    power = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    return np.fft.rfftfreq(x.size, 1 / rate), power


def tone_power(
    samples: np.ndarray, freq_hz: float, rate: int = SAMPLE_RATE, band_hz: float = 25.0
) -> float:
    """Share (0..1) of the buffer's power within `band_hz` of `freq_hz`."""
    if samples.size < 2:
        return 0.0
    freqs, power = _spectrum(samples, rate)
    total = power.sum()
    if total <= 0:
        return 0.0
    return float(power[np.abs(freqs - freq_hz) <= band_hz].sum() / total)


def tone_shares(
    samples: np.ndarray, freqs: list[float], rate: int = SAMPLE_RATE, band_hz: float = 25.0
) -> list[float]:
    """`tone_power` of each of `freqs`, from one spectrum (a mix holds many tones)."""
    if samples.size < 2:
        return [0.0] * len(freqs)
    bins, power = _spectrum(samples, rate)
    total = power.sum()
    if total <= 0:
        return [0.0] * len(freqs)
    cumulative = np.concatenate(([0.0], np.cumsum(power)))
    out = []
    for f in freqs:
        lo = np.searchsorted(bins, f - band_hz, side="left")
        hi = np.searchsorted(bins, f + band_hz, side="right")
        out.append(float((cumulative[hi] - cumulative[lo]) / total))
    return out


def dominant_frequencies(
    samples: np.ndarray,
    count: int = 3,
    rate: int = SAMPLE_RATE,
    min_share: float = 0.02,
    separation_hz: float = 50.0,
) -> list[tuple[float, float]]:
    """Up to `count` strongest peaks as (frequency Hz, share of total power), strongest
    first; peaks closer than `separation_hz` to a stronger one count as part of it."""
    if samples.size < 2:
        return []
    freqs, power = _spectrum(samples, rate)
    total = power.sum()
    if total <= 0:
        return []
    found: list[tuple[float, float]] = []
    for i in np.argsort(power)[::-1]:
        f = float(freqs[i])
        if any(abs(f - g) < separation_hz for g, _ in found):
            continue
        share = float(power[np.abs(freqs - f) < separation_hz / 2].sum() / total)
        if share < min_share:
            break
        found.append((f, share))
        if len(found) == count:
            break
    return found


def hears(
    samples: np.ndarray, freq_hz: float, rate: int = SAMPLE_RATE, min_share: float = 0.05
) -> bool:
    """Whether a tone at `freq_hz` holds at least `min_share` of the buffer's power."""
    return tone_power(samples, freq_hz, rate) >= min_share


def find_markers(
    samples: np.ndarray,
    threshold: float = 0.5,
    quiet: float = 0.05,
    quiet_s: float = 0.012,
    guard_s: float = 0.004,
    rate: int = SAMPLE_RATE,
) -> list[int]:
    """Sample indices where a loud onset (|x| > threshold of full scale) follows silence
    (|x| < quiet for quiet_s, ending guard_s before it: codecs smear an onset a little)."""
    a = np.abs(samples.astype(np.float32)) / FULL_SCALE
    loud = np.flatnonzero(a > threshold)
    if loud.size == 0:
        return []
    quiet_n, guard_n = round(quiet_s * rate), round(guard_s * rate)
    firsts = loud[np.concatenate(([True], np.diff(loud) > quiet_n + guard_n))]
    out = []
    for i in firsts:
        lo, hi = i - guard_n - quiet_n, i - guard_n
        if lo >= 0 and a[lo:hi].max() < quiet:
            out.append(int(i))
    return out


def marker_latencies(mouth_times: list[float], ear_times: list[float]) -> list[float]:
    """Seconds from each marker's mouth time (ToneSource.sent_markers) to when it reached a
    sink (CaptureSink.marker_arrivals): each arrival is matched with the latest marker sent
    before it, so markers must be further apart than the latency."""
    out = []
    for ear in ear_times:
        sent = [m for m in mouth_times if m <= ear]
        if sent:
            out.append(ear - max(sent))
    return out
