"""The tones simulated devices send: each its own, so a listener's spectrum (a mix's
too) tells who it hears; kept apart from fleet.device.audio, which loads aiortc."""

from __future__ import annotations

# Far apart, and no one a low harmonic of another: a listener's spectrum tells them apart.
# Up to 6.9 kHz: a 16 kHz mix (the mixer's default rate) carries them all; G.711 (8 kHz)
# carries the first 18.
TONE_BASE_HZ = 400.0
TONE_STEP_HZ = 175.0
TONE_SLOTS = 38
TONE_AMPLITUDE = 0.3
MIX_HEADROOM = 0.9  # the peak a mix of every tone may reach (of full scale)


def tone_for(index: int) -> float:
    """The tone of the `index`-th simulated device (0-based); distinct for TONE_SLOTS."""
    return TONE_BASE_HZ + TONE_STEP_HZ * (index % TONE_SLOTS)


def tone_amplitude(devices: int) -> float:
    """Each tone's amplitude in a fleet of `devices`: a mixer sums the others' tones for
    each member, and that sum must not clip (clipping smears tones into each other)."""
    return min(TONE_AMPLITUDE, MIX_HEADROOM / max(1, devices - 1))


# The ring tone a device plays for a call (§14.7): two tones together, 2 s on, 4 s off.
RING_HZ = (440.0, 480.0)
RING_ON_S = 2.0
RING_OFF_S = 4.0
RING_AMPLITUDE = 0.2  # of full scale, each tone
# What a ringing device "hears" the ring as (its sinks' peer name).
RING_PEER = "ring"
