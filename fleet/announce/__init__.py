"""Announcements (docs/protocol.md §14): rendered once by the controller (chime + speech or
a WAV, `render`), queued per device by priority (`queue`) and sent over MQTT to each
target (`part`: the controller part that serves the `announce` API op)."""

from fleet.announce.part import AnnouncePart, RoomView
from fleet.announce.render import Clip, Renderer, RenderError

__all__ = ["AnnouncePart", "Clip", "RenderError", "Renderer", "RoomView"]
