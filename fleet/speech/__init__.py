"""Speech shared by the participants and the controller: text-to-speech engines
(`tts`: espeak-ng offline, any OpenAI-compatible endpoint) and speech audio helpers
(`audio`). Agents' voice pipeline and the controller's announcements both use them, so
neither imports the other."""
