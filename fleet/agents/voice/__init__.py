"""A voice pipeline on the agent interface: endpointing (VAD) → speech-to-text → a brain →
text-to-speech, with barge-in and a transcript per turn.

Each stage is a small interface with an offline default that needs no model download:
pocketsphinx 5 (its wheel carries an en-US model; its own WebRTC VAD) and espeak-ng
(Debian package). Optional backends: any OpenAI-compatible endpoint for speech-to-text,
the LLM and text-to-speech (`VoiceSettings`, FLEET_VOICE_* variables).

| module | what |
| --- | --- |
| `endpoint.py` | `Endpointer`: per-speaker VAD, turn start (for barge-in) and turn end |
| `stt.py` | `SpeechToText`: `PocketSphinxSTT` (grammar from the brain's phrases), `OpenAISTT` |
| `tts.py` | `TextToSpeech`: `EspeakTTS`, `OpenAITTS` |
| `brain.py` | `Brain`: `FleetBrain` (a grammar of fleet intents), `LLMBrain` (tools) |
| `actions.py` | `FleetActions`: the intents carried out through the automation API |
| `pipeline.py` | `VoiceAgent` (the assistant), `TranscriberAgent` |
| `settings.py` | `VoiceSettings` and `build_*` from them |
"""
