"""Where a mixer is and how to prove we may use it: a Janus WebSocket URL and its API
secret.

A mixer is named by one string, so that the pool, `--mixer` and FLEET_MIXERS stay lists
of strings: the secret may ride in the URL's password, `ws://:SECRET@HOST:PORT`. It is
taken out before connecting (the websockets library would send it as HTTP Basic auth)
and never shown: `display` is the URL without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

# The Origin our client sends. A generated Janus accepts no other (browsers always send
# the page's own, and no page can be served from the reserved `.invalid` domain), so a
# web page on this machine cannot drive the mixer through a visitor's browser.
CLIENT_ORIGIN = "http://fleet-controller.invalid"


@dataclass(frozen=True, slots=True)
class MixerAddress:
    url: str  # ws://HOST:PORT, without credentials
    api_secret: str | None = None  # Janus's api_secret (None: the mixer asks for none)

    @classmethod
    def parse(cls, text: str, default_secret: str | None = None) -> MixerAddress:
        """`ws://HOST:PORT` or `ws://:SECRET@HOST:PORT`; a URL without a secret gets
        `default_secret` (`--mixer-secret`)."""
        parts = urlsplit(text)
        secret = unquote(parts.password) if parts.password else default_secret
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        return cls(url, secret or None)

    @property
    def display(self) -> str:
        """The URL, for logs, events and errors: never the secret."""
        return self.url

    def text(self) -> str:
        """The one-string form (`parse` reads it back)."""
        if not self.api_secret:
            return self.url
        parts = urlsplit(self.url)
        netloc = f":{quote(self.api_secret, safe='')}@{parts.netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
