"""The mixed rooms' fixtures: a network namespace and a real Janus AudioBridge in it, both
module-scoped, so each module of this folder has its own (tests/support/mixers.py)."""

from __future__ import annotations

from tests.support.mixers import janus as janus
from tests.support.mixers import mixed_net as mixed_net
