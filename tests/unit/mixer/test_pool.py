"""fleet.mixer.pool: which mixer a new mixed session goes to (least loaded, healthy, not
the one excluded), and the errors that say why there is none. The connections are real
objects that never opened: a mixer is healthy while its bridge's connection is not lost."""

from __future__ import annotations

import pytest

from fleet.mixer.audiobridge import AudioBridge
from fleet.mixer.errors import INSTALL_HINT, MixerFailed, MixerUnavailable
from fleet.mixer.janus import JanusConnection
from fleet.mixer.pool import Mixer, MixerPool, mixer_name
from tests.support.brokers import free_port

URLS = ["ws://10.0.0.1:8188", "ws://10.0.0.2:8188", "ws://10.0.0.3:8188"]


def up(mixer: Mixer) -> Mixer:
    """The mixer as the pool holds it once connected: a bridge on a live connection."""
    mixer.bridge = AudioBridge(JanusConnection(mixer.url, mixer.name))
    mixer.error = None
    return mixer


def lost(mixer: Mixer, why: str = "connection closed") -> Mixer:
    assert mixer.bridge is not None
    mixer.bridge.janus.lost = why
    return mixer


def test_mixers_are_named_in_the_order_given() -> None:
    pool = MixerPool(URLS)
    assert [m.name for m in pool.mixers] == ["janus-1", "janus-2", "janus-3"]
    assert [m.url for m in pool.mixers] == URLS
    assert mixer_name(0) == "janus-1"
    assert pool.get("janus-2") is pool.mixers[1]
    assert pool.get("janus-9") is None


def test_health_is_a_bridge_on_a_connection_not_lost() -> None:
    pool = MixerPool(URLS[:1])
    (m,) = pool.mixers
    assert not m.healthy  # never connected
    up(m)
    assert m.healthy
    lost(m)
    assert not m.healthy


def test_the_least_loaded_healthy_mixer_is_picked() -> None:
    pool = MixerPool(URLS)
    for m in pool.mixers:
        up(m)
    load = {"janus-1": 3, "janus-2": 1, "janus-3": 2}
    assert pool.pick(lambda m: load[m.name]).name == "janus-2"


def test_a_tie_goes_to_the_first_given() -> None:
    pool = MixerPool(URLS)
    for m in pool.mixers:
        up(m)
    load = {"janus-1": 2, "janus-2": 1, "janus-3": 1}
    assert pool.pick(lambda m: load[m.name]).name == "janus-2"
    assert pool.pick(lambda _: 0).name == "janus-1"


def test_unhealthy_mixers_are_passed_over_however_idle() -> None:
    pool = MixerPool(URLS)
    m1, m2, m3 = pool.mixers
    up(m1)
    lost(up(m2))  # lost its connection
    assert not m3.healthy  # never connected
    load = {"janus-1": 50, "janus-2": 0, "janus-3": 0}
    assert pool.pick(lambda m: load[m.name]) is m1


def test_the_excluded_mixer_is_never_picked() -> None:
    """A session moving off a mixer names it: it goes elsewhere even if that one is idle."""
    pool = MixerPool(URLS[:2])
    m1, m2 = pool.mixers
    up(m1)
    up(m2)
    load = {"janus-1": 0, "janus-2": 9}
    assert pool.pick(lambda m: load[m.name], exclude="janus-1") is m2
    with pytest.raises(MixerUnavailable):
        MixerPool(URLS[:1]).pick(lambda _: 0, exclude="janus-1")


def test_no_mixer_configured_says_how_to_get_one() -> None:
    with pytest.raises(MixerUnavailable) as caught:
        MixerPool([]).pick(lambda _: 0)
    assert caught.value.mixer == "none"
    assert INSTALL_HINT in caught.value.reason
    assert caught.value.code == "mixer_unavailable"


def test_unreachable_mixers_are_named_with_their_reasons() -> None:
    pool = MixerPool(URLS[:2])
    m1, m2 = pool.mixers
    with pytest.raises(MixerUnavailable) as caught:
        pool.pick(lambda _: 0)
    assert "not connected yet" in caught.value.reason
    m1.error = MixerUnavailable(m1.name, "connection refused")
    m2.error = MixerUnavailable(m2.name, "timed out")
    with pytest.raises(MixerUnavailable) as caught:
        pool.pick(lambda _: 0)
    assert "janus-1 (ws://10.0.0.1:8188), janus-2 (ws://10.0.0.2:8188)" in caught.value.mixer
    assert caught.value.reason == "not reachable: connection refused; timed out"


def test_a_mixer_that_answers_garbage_is_a_failure_not_an_absence() -> None:
    pool = MixerPool(URLS[:2])
    m1, m2 = pool.mixers
    m1.error = MixerUnavailable(m1.name, "connection refused")
    m2.error = MixerFailed(m2.name, "'list' answered without plugin data")
    with pytest.raises(MixerFailed) as caught:
        pool.pick(lambda _: 0)
    assert (caught.value.mixer, caught.value.code) == ("janus-2", "mixer_failed")
    # ... unless that one is the mixer excluded.
    with pytest.raises(MixerUnavailable):
        pool.pick(lambda _: 0, exclude="janus-2")


async def test_a_mixer_whose_port_refuses_is_tried_once_and_unhealthy() -> None:
    """The pool's own connection loop against a port nothing listens on."""
    url = f"ws://127.0.0.1:{free_port()}"
    ups: list[str] = []
    async with MixerPool([url], on_up=lambda m: ups.append(m.name)) as pool:
        await pool.wait_ready()
        (m,) = pool.mixers
        assert not m.healthy
        assert isinstance(m.error, MixerUnavailable)
        assert m.up.is_set()
        with pytest.raises(MixerUnavailable):
            pool.pick(lambda _: 0)
    assert ups == []
